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

#: {tag: the view's metric}: ``<tm>/accuracy`` is the attack's balanced accuracy
TM_KEYS = {"auc": "auc", "tpr_at_1pct": "tpr_at_1pct", "tpr_at_0_1pct": "tpr_at_0_1pct",
           "tpr_at_0_01pct": "tpr_at_0_01pct", "epsilon_lower": "epsilon_lower", "accuracy": "attack_accuracy"}
#: {tag: the round line's field}: ``utility/accuracy`` is the global model's test accuracy
UTILITY_KEYS = {"accuracy": "model_accuracy", "loss": "loss", "train_loss": "train_loss"}
KIND = "rounds"


def round_scalars(run) -> list[tuple[int, dict[str, float]]]:
    """[(round, {tag: value})] from a RunData's rounds (finite values only)."""
    out = []
    tms = run.threat_models()
    for line in run.rounds:
        scalars = {}
        for tag, key in UTILITY_KEYS.items():
            v = getattr(line, key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                scalars[f"utility/{tag}"] = float(v)
        for tm in tms:
            view = line.view(tm)
            if view is None:
                continue
            for tag, key in TM_KEYS.items():
                v = view.value(key)
                if v is not None and math.isfinite(v):
                    scalars[f"{tm}/{tag}"] = float(v)
        if scalars:
            out.append((line.round, scalars))
    return out


def write_scalars(run, directory) -> Path | None:
    """Write (replace) the run's event file under ``directory``; return its path (None: no rounds)."""
    return _scalars.write_scalars(directory, round_scalars(run), kind=KIND)


__all__ = ["write_scalars", "read_scalars", "round_scalars", "FILE_PREFIX", "FILE_SUFFIX"]
