"""TensorBoard scalars: event files written and read with the ``tensorboard`` package, without TensorFlow.

:func:`write_scalars` builds each step's ``Summary`` with TensorBoard's scalar plugin (``scalar_pb``), wraps it in
an ``Event`` and frames the events with TensorBoard's ``RecordWriter`` (length, masked CRC32C, data, masked
CRC32C), then writes the file atomically: a run dir never holds half an event file. It does not use
``EventFileWriter``, whose file access goes through ``tensorboard.compat.tf`` and so imports TensorFlow wherever it
is installed (the report must build without it). :func:`read_scalars` reads a file back with TensorBoard's
record reader (every CRC checked).

Used by the run report (:mod:`fedaudit.report.tensorboard`, per-round scalars) and by the whitebox attack
(:mod:`fedaudit.attacks.whitebox`, training curves); ``tensorboard --logdir DIR`` shows both.
"""

from __future__ import annotations

import io
import math
import os
import socket
import time
from pathlib import Path

import numpy as np

from fedaudit.rundir import atomic_write_bytes

FILE_PREFIX = "events.out.tfevents."
FILE_SUFFIX = ".fedaudit"


def event_file_name(kind: str = "scalars", wall_time: float | None = None) -> str:
    """``events.out.tfevents.<time>.<host>.<pid>.<kind>.fedaudit``: TensorBoard's naming, with our suffix."""
    stamp = int(time.time() if wall_time is None else wall_time)
    return f"{FILE_PREFIX}{stamp:010d}.{socket.gethostname()}.{os.getpid()}.{kind}{FILE_SUFFIX}"


def encode_events(steps, wall_time: float | None = None) -> bytes:
    """The bytes of an event file: a file-version event, then one event per ``(step, {tag: value})``.

    Non-finite values are left out (TensorBoard would draw them as gaps or spikes)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb
    from tensorboard.summary.writer.record_writer import RecordWriter

    now = time.time() if wall_time is None else float(wall_time)
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    header = event_pb2.Event(wall_time=now, file_version="brain.Event:2")
    header.source_metadata.writer = "fedaudit"
    writer.write(header.SerializeToString())
    for step, scalars in steps:
        event = event_pb2.Event(wall_time=now, step=int(step))
        for tag, value in scalars.items():
            value = float(value)
            if math.isfinite(value):
                event.summary.value.extend(scalar_pb(tag, np.float32(value)).value)
        if event.summary.value:
            writer.write(event.SerializeToString())
    return buffer.getvalue()


def write_scalars(directory, steps, *, kind: str = "scalars", replace: bool = True) -> Path | None:
    """Write ``steps`` (``[(step, {tag: value})]``) as one event file under ``directory``; return its path.

    ``replace``: first remove the event files of the same ``kind`` this module wrote there, so that a rebuilt
    report does not show up as a second run in TensorBoard. Nothing is written (None) when there are no steps."""
    directory = Path(directory)
    if replace and directory.is_dir():
        for old in directory.glob(f"{FILE_PREFIX}*.{kind}{FILE_SUFFIX}"):
            old.unlink(missing_ok=True)
    steps = list(steps)
    if not steps:
        return None
    now = time.time()
    return atomic_write_bytes(directory / event_file_name(kind, now), encode_events(steps, now))


def read_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` from one event file, read with TensorBoard's record reader (CRCs checked)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
    from tensorboard.util import tensor_util

    reader = PyRecordReader_New(str(path))
    out: dict[str, list] = {}
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return out
        event = event_pb2.Event.FromString(reader.record())
        for value in event.summary.value:
            if value.HasField("tensor"):
                number = float(tensor_util.make_ndarray(value.tensor))
            elif value.HasField("simple_value"):
                number = float(value.simple_value)
            else:
                continue
            out.setdefault(value.tag, []).append((int(event.step), number))


__all__ = ["write_scalars", "read_scalars", "encode_events", "event_file_name", "FILE_PREFIX", "FILE_SUFFIX"]
