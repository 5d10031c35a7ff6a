"""Per-round scalars as a TensorBoard event file, written without TensorFlow or the tensorboard package.

An event file is a sequence of TFRecords (length, masked CRC32C of the length, an ``Event`` protocol buffer,
masked CRC32C of the data). The few protobuf fields needed are encoded by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }      Value { string tag = 1; float simple_value = 2; }

Tags: ``utility/accuracy``, ``utility/loss``, ``utility/train_loss``, and per threat model
``<tm>/auc``, ``<tm>/tpr_at_1pct``, ``<tm>/tpr_at_0_1pct``, ``<tm>/tpr_at_0_01pct``, ``<tm>/epsilon_lower``,
``<tm>/accuracy``; the step is the round. ``tensorboard --logdir RUN_DIR/tensorboard`` (or the suite folder,
to see all its runs side by side) shows them.
"""

from __future__ import annotations

import math
import struct
import time
from pathlib import Path

from fedaudit.rundir import atomic_write_bytes

FILE_PREFIX = "events.out.tfevents."
FILE_SUFFIX = ".fedaudit"
TM_KEYS = ("auc", "tpr_at_1pct", "tpr_at_0_1pct", "tpr_at_0_01pct", "epsilon_lower", "accuracy")
UTILITY_KEYS = ("accuracy", "loss", "train_loss")

# --- CRC32C (Castagnoli), table-driven -----------------------------------------------------------------

_POLY = 0x82F63B78
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


# --- protobuf encoding ---------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
    out = _key(1, 1) + struct.pack("<d", float(wall_time)) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode("utf-8"))
    if scalars:
        values = b""
        for tag, value in scalars.items():
            v = _length_delimited(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", float(value))
            values += _length_delimited(1, v)
        out += _length_delimited(5, values)
    return out


# --- decoding (for tests and for `read_scalars`) --------------------------------------------------------


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def read_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from one event file (checks every CRC)."""
    data = Path(path).read_bytes()
    out: dict[str, list] = {}
    i = 0
    while i < len(data):
        header = data[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[i + 8:i + 12])
        if crc != masked_crc32c(header):
            raise ValueError(f"{path}: bad length CRC at byte {i}")
        payload = data[i + 12:i + 12 + n]
        (crc,) = struct.unpack("<I", data[i + 12 + n:i + 16 + n])
        if crc != masked_crc32c(payload):
            raise ValueError(f"{path}: bad data CRC at byte {i}")
        i += 16 + n
        step = 0
        summary = None
        for field, _, value in _fields(payload):
            if field == 2:
                step = value
            elif field == 5:
                summary = value
        if summary is None:
            continue
        for field, _, value in _fields(summary):
            if field != 1:
                continue
            tag, simple = None, None
            for f2, _, v2 in _fields(value):
                if f2 == 1:
                    tag = v2.decode("utf-8")
                elif f2 == 2:
                    (simple,) = struct.unpack("<f", v2)
            if tag is not None and simple is not None:
                out.setdefault(tag, []).append((step, simple))
    return out


# --- the run's scalars ----------------------------------------------------------------------------------


def round_scalars(run) -> list[tuple[int, dict[str, float]]]:
    """[(round, {tag: value})] from a RunData's rounds (finite values only)."""
    out = []
    for r in run.rounds:
        step = r.get("round")
        if not isinstance(step, int):
            continue
        scalars = {}
        for key in UTILITY_KEYS:
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                scalars[f"utility/{key}"] = float(v)
        for tm in run.threat_models():
            obj = r.get(tm)
            if not isinstance(obj, dict):
                continue
            summ = obj.get("summary") if isinstance(obj.get("summary"), dict) else {}
            for key in TM_KEYS:
                v = obj.get(key, summ.get(key))
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    scalars[f"{tm}/{key}"] = float(v)
        if scalars:
            out.append((step, scalars))
    return out


def write_scalars(run, directory) -> Path | None:
    """Write (replace) the run's event file under ``directory``; return its path (None: no rounds)."""
    directory = Path(directory)
    for old in directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}") if directory.is_dir() else []:
        old.unlink(missing_ok=True)
    steps = round_scalars(run)
    if not steps:
        return None
    now = time.time()
    data = tfrecord(encode_event(now, 0, file_version="brain.Event:2"))
    for step, scalars in steps:
        data += tfrecord(encode_event(now, step, scalars=scalars))
    path = directory / f"{FILE_PREFIX}{int(now)}{FILE_SUFFIX}"
    return atomic_write_bytes(path, data)


__all__ = ["write_scalars", "read_scalars", "round_scalars", "encode_event", "tfrecord", "masked_crc32c", "crc32c"]
