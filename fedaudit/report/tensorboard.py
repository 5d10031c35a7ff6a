"""A run's per-round scalars for TensorBoard, written with :mod:`fedaudit.scalars` (the tensorboard package).

Tags: ``utility/accuracy``, ``utility/loss``, ``utility/train_loss``, and per threat model
``<tm>/auc``, ``<tm>/tpr_at_1pct``, ``<tm>/tpr_at_0_1pct``, ``<tm>/tpr_at_0_01pct``, ``<tm>/epsilon_lower``,
``<tm>/accuracy``; the step is the round. ``tensorboard --logdir RUN_DIR/tensorboard`` (or the suite folder,
to see all its runs side by side) shows them. A rate that cannot be measured has no scalar (not a fake 0).
"""

from __future__ import annotations

import math
from pathlib import Path

from fedaudit import scalars as _scalars
from fedaudit.scalars import FILE_PREFIX, FILE_SUFFIX, read_scalars

TM_KEYS = ("auc", "tpr_at_1pct", "tpr_at_0_1pct", "tpr_at_0_01pct", "epsilon_lower", "accuracy")
UTILITY_KEYS = ("accuracy", "loss", "train_loss")
KIND = "rounds"


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
    return _scalars.write_scalars(directory, round_scalars(run), kind=KIND)


__all__ = ["write_scalars", "read_scalars", "round_scalars", "FILE_PREFIX", "FILE_SUFFIX"]
