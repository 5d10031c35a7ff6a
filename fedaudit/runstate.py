"""Where a run stands: ``status.json``, the per-round checkpoints, and the round a resumed run starts from.

NumPy only. ``status.json`` (a :class:`fedaudit.schema.RunStatus`) says whether the run is running, finished, failed or interrupted (by which
signal, in which round) and how far it got; every attempt (the first run and each resume) is appended to
its ``attempts``. ``checkpoints/round_NNNN.npz`` holds the global weights after round N and the server
strategy's state (server momentum, Adam moments), written atomically before the round is handed to the
auditor. A round is *complete* when its line in rounds.jsonl holds the utility and, with the audit on, every
threat model (and its ``audit/round_NNNN.npz`` exists): a resumed run starts after the last checkpoint whose
rounds are all complete (round 0: the initial weights, rebuilt from the seed), and checkpoints below that
point are deleted as the run goes.

While a run is going it holds an exclusive lock on ``.fedaudit.lock`` in its run directory (released by the
kernel when the process ends, even on SIGKILL), so a resume can tell a dead run from a live one.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import socket
import time
import zipfile
from pathlib import Path

import numpy as np

from fedaudit.errors import FedAuditError
from fedaudit.rundir import atomic_save_npz, json_safe, scan_jsonl
from fedaudit.schema import STATUS_FILE, RoundLine, RunStatus, round_number
from fedaudit.schema import read_status as _read_status
from fedaudit.schema import write_status

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".fedaudit.lock"
DAMAGED_SUFFIX = ".damaged"
ABANDONED_SUFFIX = ".abandoned"     # what an interrupted attempt wrote for rounds that a resumed run does again
WEIGHT = "weight__"
STATE = "state__"


# ---- status.json ------------------------------------------------------------------------------------

def read_status(run_dir, problems: list | None = None) -> RunStatus:
    """The run's status (``state`` None if there is none); an unreadable file is named in a warning and
    ``problems``."""
    return _read_status(Path(run_dir) / STATUS_FILE, problems)


_STATUS_FIELDS = {f.name for f in dataclasses.fields(RunStatus)} - {"extra", "schema_version"}


def update_status(run_dir, **fields) -> RunStatus:
    """Set fields of status.json (fields it does not know go to its ``extra``) and write it."""
    status = read_status(run_dir)
    for name, value in json_safe(fields).items():
        if name in _STATUS_FIELDS:
            setattr(status, name, value)
        else:
            status.extra[name] = value
    status.updated = round(time.time(), 3)
    write_status(Path(run_dir) / STATUS_FILE, status)
    return status


def start_attempt(run_dir, *, rounds: int, from_round: int, resumed: bool) -> RunStatus:
    """Record that this process now runs ``run_dir`` from round ``from_round`` + 1."""
    attempts = list(read_status(run_dir).attempts)
    attempts.append({"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3),
                     "from_round": int(from_round), "resumed": bool(resumed)})
    return update_status(run_dir, state="running", rounds=int(rounds), attempts=attempts, signal=None,
                         interrupted_in_round=None, error=None)


def end_attempt(run_dir, state: str, **fields) -> RunStatus:
    attempts = list(read_status(run_dir).attempts)
    if attempts:
        attempts[-1] = {**attempts[-1], "ended": round(time.time(), 3), "state": state,
                        **{k: v for k, v in fields.items() if k in ("signal", "interrupted_in_round", "error")}}
    return update_status(run_dir, state=state, attempts=attempts, **fields)


# ---- the run lock -----------------------------------------------------------------------------------

class RunLock:
    """An exclusive, non-blocking lock on the run directory for as long as a run uses it."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self._fh = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise FedAuditError(f"{self.path.parent}: in use by a fedaudit run that is still going "
                                f"({_holder(self.path.parent)}); wait for it or stop it first") from None
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _holder(run_dir) -> str:
    attempts = read_status(run_dir).attempts or [{}]
    pid = attempts[-1].get("pid") if isinstance(attempts[-1], dict) else None
    return f"pid {pid}" if pid else "pid unknown"


# ---- checkpoints ------------------------------------------------------------------------------------

def checkpoint_path(run_dir, round_: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"round_{int(round_):04d}.npz"


def save_checkpoint(run_dir, round_: int, weights, state: dict | None = None) -> Path:
    arrays = {f"{WEIGHT}{i:04d}": np.asarray(w) for i, w in enumerate(weights)}
    arrays.update({f"{STATE}{k}": np.asarray(v) for k, v in (state or {}).items()})
    arrays["round"] = np.int64(round_)
    return atomic_save_npz(checkpoint_path(run_dir, round_), **arrays)


def load_checkpoint(path) -> tuple[int, list, dict]:
    """(round, weights, strategy state) of a checkpoint; FedAuditError naming the file if it is unreadable."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            weights = [z[k] for k in sorted(k for k in z.files if k.startswith(WEIGHT))]
            state = {k[len(STATE):]: z[k] for k in z.files if k.startswith(STATE)}
            round_ = int(z["round"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise FedAuditError(f"{path}: unreadable checkpoint ({exc})") from None
    if not weights:
        raise FedAuditError(f"{path}: a checkpoint without weights")
    return round_, weights, state


def checkpoint_rounds(run_dir) -> list[int]:
    out = []
    for p in (Path(run_dir) / CHECKPOINT_DIR).glob("round_*.npz"):
        try:
            out.append(int(p.stem.split("_", 1)[1]))
        except ValueError:
            continue
    return sorted(out)


def prune_checkpoints(run_dir, keep_from: int) -> None:
    """Delete the checkpoints of rounds below ``keep_from`` (a resume never starts before it)."""
    for r in checkpoint_rounds(run_dir):
        if r < keep_from:
            checkpoint_path(run_dir, r).unlink(missing_ok=True)


# ---- how far a run got ------------------------------------------------------------------------------

def _round_npz(run_dir, round_: int) -> Path:
    from fedaudit.auditor.state import round_path

    return round_path(run_dir, round_)


def _trained(row: dict) -> RoundLine | None:
    """A rounds.jsonl line (a raw JSON object) whose utility the driver recorded (its test accuracy, even when
    that is not a number), as a RoundLine; None otherwise."""
    if round_number(row.get("round")) is None or not ("model_accuracy" in row or "accuracy" in row):
        return None
    return RoundLine.from_dict(row)


def complete_rounds(run_dir, scenario, rows: list | None = None) -> set[int]:
    """Rounds whose utility is recorded and, with the audit on, whose every threat model is audited."""
    if rows is None:
        rows, _ = scan_jsonl(Path(run_dir) / "rounds.jsonl")
    from fedaudit.twins import audited_here

    audit = scenario.audit
    done = set()
    for line in filter(None, map(_trained, rows)):
        if audit.enabled and not (set(audited_here(scenario)) <= set(line.views)
                                  and _round_npz(run_dir, line.round).exists()):
            continue
        done.add(line.round)
    return done


def contiguous(done: set[int]) -> int:
    """The largest c with rounds 1..c all in ``done`` (0 if round 1 is not)."""
    c = 0
    while c + 1 in done:
        c += 1
    return c


def resume_round(run_dir, scenario, rows: list | None = None) -> int:
    """The round a resumed run would continue after: the last checkpoint (or 0) whose rounds are complete."""
    c = contiguous(complete_rounds(run_dir, scenario, rows))
    return max([r for r in checkpoint_rounds(run_dir) if r <= c], default=0)


def progress(run_dir, scenario) -> dict:
    """How far the run got, for status.json and the messages of an interrupted run."""
    rows, _ = scan_jsonl(Path(run_dir) / "rounds.jsonl")
    trained = {line.round for line in filter(None, map(_trained, rows))}
    return {"rounds_trained": contiguous(trained),
            "rounds_complete": contiguous(complete_rounds(run_dir, scenario, rows)),
            "resume_after_round": resume_round(run_dir, scenario, rows)}


def move_aside(path: Path, suffix: str = DAMAGED_SUFFIX) -> Path:
    """Rename a damaged file to ``<name>.damaged`` (or another ``suffix``; numbered if that exists): kept, but no
    longer read."""
    target = path.with_name(path.name + suffix)
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{suffix}{n}")
    os.replace(path, target)
    return target


__all__ = ["CHECKPOINT_DIR", "STATUS_FILE", "RunLock", "checkpoint_path", "checkpoint_rounds", "complete_rounds",
           "end_attempt", "load_checkpoint", "move_aside", "progress", "prune_checkpoints", "read_status",
           "resume_round", "save_checkpoint", "start_attempt", "update_status"]
