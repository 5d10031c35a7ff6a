"""The run directory: every file written atomically (temporary name, then rename)."""

from __future__ import annotations

import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np


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


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line cannot happen with atomic writes; stop at anything unreadable
    return rows


def upsert_jsonl(path: str | Path, row: dict, key: str = "round") -> list[dict]:
    """Add ``row`` to a JSON-lines file, replacing any row with the same ``key``; rewrite atomically."""
    rows = [r for r in read_jsonl(path) if r.get(key) != row.get(key)]
    rows.append(json_safe(row))
    rows.sort(key=lambda r: (r.get(key) is None, r.get(key)))
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows))
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
