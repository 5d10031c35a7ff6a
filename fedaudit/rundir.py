"""The run directory: every file written atomically (temporary name, then rename)."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from fedaudit.errors import FedAuditError

log = logging.getLogger(__name__)
_warned: set = set()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_save_npz(path: str | Path, **arrays) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def json_safe(value):
    """Replace NaN and infinities by None and NumPy scalars/arrays by Python values, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def scan_jsonl(path: str | Path) -> tuple[list[dict], list[tuple[int, str, bytes]]]:
    """Every intact JSON object of a JSON-lines file, and ``(line number, reason, raw bytes)`` of each line that is
    not one (a truncated or otherwise damaged line). Blank lines are neither."""
    path = Path(path)
    if not path.exists():
        return [], []
    rows, bad = [], []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((number, f"not UTF-8 text (byte {exc.start})", raw))
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append((number, f"not valid JSON ({exc.msg} at column {exc.colno})", raw))
            continue
        if not isinstance(row, dict):
            bad.append((number, f"not a JSON object (a {type(row).__name__})", raw))
            continue
        rows.append(row)
    return rows, bad


def describe_bad_line(path: str | Path, number: int, reason: str) -> str:
    return f"{path} line {number}: {reason}"


def read_jsonl(path: str | Path, *, strict: bool = False, problems: list | None = None) -> list[dict]:
    """The JSON objects of a JSON-lines file, in file order.

    A line that is not a JSON object is never silently dropped: with ``strict`` the read stops with a
    FedAuditError naming the file and line; otherwise every intact line is kept, the bad line is named in a
    warning (once per process) and in ``problems`` (when given).
    """
    rows, bad = scan_jsonl(path)
    if bad and strict:
        number, reason, _ = bad[0]
        raise FedAuditError(f"{describe_bad_line(path, number, reason)}; repair or delete that line and try again")
    _warn_bad_lines(path, bad, problems)
    return rows


def _warn_bad_lines(path, bad, problems: list | None = None) -> None:
    for number, reason, raw in bad:
        if problems is not None:
            problems.append(f"{Path(path).name} line {number}: {reason}; skipped")
        key = (str(Path(path).resolve()), number, raw)
        if key not in _warned:
            _warned.add(key)
            log.warning("%s; skipped (the other lines are read)", describe_bad_line(path, number, reason))


def upsert_jsonl(path: str | Path, row: dict, key: str = "round") -> list[dict]:
    """Add ``row`` to a JSON-lines file, replacing any row with the same ``key``; rewrite atomically.

    Lines that are not JSON objects are kept, verbatim, after the rows (and named in a warning): a rewrite
    never deletes what it cannot read.
    """
    rows, bad = scan_jsonl(path)
    _warn_bad_lines(path, bad)
    rows = [r for r in rows if r.get(key) != row.get(key)]
    rows.append(json_safe(row))
    rows.sort(key=lambda r: (r.get(key) is None, r.get(key)))
    data = "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows).encode("utf-8")
    data += b"".join(raw + b"\n" for _, _, raw in bad)
    atomic_write_bytes(path, data)
    return rows


def new_run_dir(base: str | Path, scenario_name: str) -> Path:
    """``base/<scenario>-<timestamp>``; a suffix keeps two runs started in the same second apart."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(base)
    candidate = base / f"{scenario_name}-{stamp}"
    n = 1
    while candidate.exists():
        n += 1
        candidate = base / f"{scenario_name}-{stamp}-{n}"
    return candidate
