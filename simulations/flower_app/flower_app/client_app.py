"""The ClientApp: your training loop as it is; fedaudit adds one mod that tags each reply with its partition id."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedaudit.flower import partition_id_mod
from flower_app.task import data_from_config, load_model

app = ClientApp(mods=[partition_id_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    model = load_model(float(cfg["learning-rate"]), int(cfg["seed"]))
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    partition_id = int(context.node_config["partition-id"])
    x, y = data_from_config(cfg, int(context.node_config["num-partitions"])).load_partition(partition_id)
    history = model.fit(x, y, epochs=int(cfg["local-epochs"]), batch_size=int(cfg["batch-size"]), verbose=0)
    metrics = MetricRecord({"train_loss": float(history.history["loss"][-1]), "num-examples": len(x)})
    content = RecordDict({"arrays": ArrayRecord(model.get_weights()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    model = load_model(float(cfg["learning-rate"]), int(cfg["seed"]))
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    x, y = data_from_config(cfg, int(context.node_config["num-partitions"])).load_split("test")
    loss, accuracy = model.evaluate(x, y, verbose=0)
    metrics = MetricRecord({"eval_loss": float(loss), "eval_acc": float(accuracy), "num-examples": len(x)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
