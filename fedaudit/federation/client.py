"""The Flower ClientApp: each virtual client trains and evaluates on its own partition of the ledger."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedaudit.federation.task import TrainSpec, local_evaluate, local_train


def make_client_app(spec: TrainSpec, clip_updates: bool = False) -> ClientApp:
    """A ClientApp bound to ``spec``; ``clip_updates`` adds Flower's client-side fixed clipping mod (DP)."""
    mods = []
    if clip_updates:
        from flwr.clientapp.mod import fixedclipping_mod

        mods.append(fixedclipping_mod)
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition_id = int(context.node_config["partition-id"])
        weights = msg.content["arrays"].to_numpy_ndarrays()
        config = msg.content["config"]
        new_weights, metrics = local_train(spec, partition_id, weights, int(config["server-round"]),
                                           float(config.get("proximal-mu", 0.0)))
        metrics["uniform-weight"] = 1.0   # lets a DP strategy average updates uniformly (strategy.UNIFORM_WEIGHT_KEY)
        content = RecordDict({"arrays": ArrayRecord(new_weights), "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        partition_id = int(context.node_config["partition-id"])
        metrics = local_evaluate(spec, partition_id, msg.content["arrays"].to_numpy_ndarrays())
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app
