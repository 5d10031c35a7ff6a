"""Copies of Flower messages with some records replaced (the messages of a round share one content)."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict


def replace_records(message: Message, arrays: ArrayRecord | None = None, config: dict | None = None) -> Message:
    """A copy of a train message with other model weights and/or more config entries (the messages of a round share
    one content, which stays as it was)."""
    def record(value):
        if arrays is not None and isinstance(value, ArrayRecord):
            return arrays
        if config is not None and isinstance(value, ConfigRecord):
            return ConfigRecord({**dict(value), **config})
        return value

    content = RecordDict({k: record(v) for k, v in message.content.items()})
    return Message(content=content, dst_node_id=message.metadata.dst_node_id,
                   message_type=message.metadata.message_type, group_id=message.metadata.group_id)
