"""The auditor's state in the run dir: per-round arrays under ``audit/`` and the shared ``rounds.jsonl``.

NumPy only. Two processes write ``rounds.jsonl`` (the driver's sink writes each round's utility line as soon
as the round is aggregated, the auditor actor merges its results into that line when they exist), so every
read-modify-write holds an exclusive lock on ``.rounds.jsonl.lock`` beside it (both processes run on the
machine that holds the run dir). Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import zipfile
from pathlib import Path

import numpy as np

from fedaudit.errors import FedAuditError
from fedaudit.rundir import atomic_save_npz, read_jsonl, upsert_jsonl
from fedaudit.schema import normalise_line

AUDIT_DIR = "audit"
STACK_ROUNDS = 8      # the stacked attack reads at most this many rounds (evenly spaced, always the last)



@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on ``.<name>.lock`` beside ``path`` (released on exit, also on error)."""
    lock = Path(path).with_name(f".{Path(path).name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def merge_round(run_dir: Path, round_: int, fields: dict, *, keep_existing: bool = False) -> dict:
    """Merge ``fields`` into round ``round_``'s line of rounds.jsonl (created if absent); return the line.

    ``keep_existing``: keys already in the line win (the driver's late utility line must not erase audit
    results that were merged first).
    """
    path = Path(run_dir) / "rounds.jsonl"
    fields = normalise_line(fields)
    with locked(path):
        row = next((r for r in read_jsonl(path) if r.get("round") == round_), {"round": round_})
        row = normalise_line(row)          # an earlier version's line in this version's names
        merged = {**row, **fields, **(row if keep_existing else {})}
        if "non_finite_clients" in fields and "non_finite_clients" in row:
            merged["non_finite_clients"] = sorted({*row["non_finite_clients"], *fields["non_finite_clients"]})
        merged["round"] = round_
        upsert_jsonl(path, merged)
    return merged


def round_path(run_dir: Path, round_: int) -> Path:
    return Path(run_dir) / AUDIT_DIR / f"round_{int(round_):04d}.npz"


def save_round(run_dir: Path, round_: int, arrays: dict) -> Path:
    return atomic_save_npz(round_path(run_dir, round_), **arrays)


def load_round(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FedAuditError(f"{path}: unreadable audit round ({exc})") from None


def audited_rounds(run_dir: Path, threat_models) -> set[int]:
    """Rounds whose arrays are saved and whose rounds.jsonl line holds every threat model's result."""
    done = set()
    for row in read_jsonl(Path(run_dir) / "rounds.jsonl"):
        r = row.get("round")
        if r is not None and all(tm in row for tm in threat_models) and round_path(run_dir, r).exists():
            done.add(int(r))
    return done


def saved_rounds(run_dir: Path) -> list[int]:
    """Rounds with saved per-round arrays, sorted."""
    out = []
    for p in (Path(run_dir) / AUDIT_DIR).glob("round_*.npz"):
        try:
            out.append(int(p.stem.split("_")[1]))
        except (IndexError, ValueError):
            continue
    return sorted(out)


def stack_rounds(rounds: list[int]) -> list[int]:
    """The rounds the stacked attack puts side by side when every record has all of them as its own: all of them,
    or :data:`STACK_ROUNDS` evenly spaced (:func:`stack_slots`)."""
    picks = stack_slots(np.ones((1, len(rounds)), dtype=bool), min(STACK_ROUNDS, len(rounds)))[0]
    return [rounds[i] for i in picks]


def stack_slots(own: np.ndarray, width: int) -> np.ndarray:
    """(n, width) per record and column block, the index of the round it reads (-1: none).

    A record with c own rounds: c <= width, all of them right-aligned (the last block is its latest); c > width,
    ``width`` of them evenly spaced, the first and the last included."""
    own = np.asarray(own, dtype=bool)
    n, R = own.shape
    if width <= 0 or R == 0:
        return np.full((n, max(width, 0)), -1, dtype=np.int64)
    count = own.sum(axis=1)[:, None]
    order = np.argsort(~own, axis=1, kind="stable")           # each row's own rounds first, in round order
    s = np.arange(width)[None, :]
    spaced = np.round(s * ((count - 1) / max(width - 1, 1)))
    pos = np.where(count <= width, s - (width - count), spaced).astype(np.int64)
    ok = (pos >= 0) & (count > 0)
    idx = np.take_along_axis(order, np.clip(pos, 0, R - 1), axis=1)
    return np.where(ok, idx, -1).astype(np.int64)

