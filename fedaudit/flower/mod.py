"""The ClientApp side: :func:`partition_id_mod` tags every train reply with the client's partition id.

The aggregator sees each client's returned model, but a reply's ``src_node_id`` is a random node id; the audit
needs to know whose records trained that model. Add the mod to your ClientApp and leave its training loop as it is::

    from fedaudit.flower import partition_id_mod

    app = ClientApp(mods=[partition_id_mod])

After your ``@app.train()`` function returns, the mod writes ``partition-id`` (and ``num-partitions``) from the
node's ``context.node_config`` into the reply's MetricRecord; the server-side wrapper
(:func:`fedaudit.flower.audit_strategy`) reads and removes them before your strategy aggregates.
"""

from __future__ import annotations

from flwr.app import Context, Message

from fedaudit.federation.strategy import NUM_PARTITIONS_KEY, PARTITION_ID_KEY

TRAIN = "train"


def partition_id_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower ClientApp mod: run the app, then tag its train reply with ``partition-id`` / ``num-partitions``."""
    reply = call_next(msg, context)
    if msg.metadata.message_type.split(".")[0] != TRAIN or reply.has_error():
        return reply
    config = context.node_config
    if PARTITION_ID_KEY not in config:
        raise ValueError(f"fedaudit.flower.partition_id_mod: this node has no {PARTITION_ID_KEY!r} in its node_config; "
                         "allowed: a simulation (it sets one per node) or a SuperNode started with "
                         f"--node-config \"{PARTITION_ID_KEY}=K {NUM_PARTITIONS_KEY}=N\"")
    metrics = next(iter(reply.content.metric_records.values()), None)
    if metrics is None:
        raise ValueError("fedaudit.flower.partition_id_mod: the ClientApp's train reply has no MetricRecord; "
                         "allowed: a reply with one MetricRecord (Flower's strategies need its 'num-examples')")
    metrics[PARTITION_ID_KEY] = int(config[PARTITION_ID_KEY])
    if NUM_PARTITIONS_KEY in config:
        metrics[NUM_PARTITIONS_KEY] = int(config[NUM_PARTITIONS_KEY])
    return reply


__all__ = ["partition_id_mod"]
