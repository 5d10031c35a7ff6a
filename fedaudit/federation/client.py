"""The Flower ClientApp: a node trains as the client (partition of the ledger) the server assigns it (else as its own
partition) and evaluates on its own partition."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedaudit.federation.task import TrainSpec, client_of, local_evaluate, local_train, seed_reply_mods


def make_client_app(spec: TrainSpec, clip_updates: bool = False, local_dp=None) -> ClientApp:
    """A ClientApp bound to ``spec``; ``clip_updates`` adds Flower's client-side fixed clipping mod (central DP),
    ``local_dp`` (the scenario's DPConfig) Flower's ``LocalDpMod`` (clipping and Gaussian noise on the client)."""
    mods = []
    if clip_updates:
        from flwr.clientapp.mod import fixedclipping_mod

        mods.append(fixedclipping_mod)
    if local_dp is not None:
        mods.append(local_dp_mod(local_dp))
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        partition_id = client_of(config, context.node_config)
        weights = msg.content["arrays"].to_numpy_ndarrays()
        new_weights, metrics = local_train(spec, partition_id, weights, int(config["server-round"]),
                                           float(config.get("proximal-mu", 0.0)))
        metrics["uniform-weight"] = 1.0   # lets a DP strategy average updates uniformly (strategy.UNIFORM_WEIGHT_KEY)
        if local_dp is not None:          # LocalDpMod draws its noise from NumPy's global generator
            seed_reply_mods(spec, partition_id, int(config["server-round"]))
        content = RecordDict({"arrays": ArrayRecord(new_weights), "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        partition_id = int(context.node_config["partition-id"])
        metrics = local_evaluate(spec, partition_id, msg.content["arrays"].to_numpy_ndarrays())
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


def local_dp_mod(dp):
    """Flower's ``LocalDpMod`` adding ``N(0, (noise_multiplier * clipping_norm)^2)`` to every parameter of the clipped
    update (see :func:`fedaudit.federation.canary.local_dp_epsilon` for the mapping)."""
    from flwr.clientapp.mod import LocalDpMod

    from fedaudit.federation.canary import local_dp_epsilon

    return LocalDpMod(clipping_norm=dp.clipping_norm, sensitivity=dp.clipping_norm,
                      epsilon=local_dp_epsilon(dp.noise_multiplier, dp.delta), delta=dp.delta)
