"""Metrics of one threat model's scores, shared by the per-round audit and the aggregation across rounds.

NumPy only: summaries on the finite scores (:func:`summary_or_none`), the four headline numbers without
intervals (:func:`light_metrics`, per client and round), and the empty headline of a skipped view.
"""

from __future__ import annotations

import numpy as np

from fedaudit.metrics import summarize
from fedaudit.schema import HEADLINE_KEYS

AGGREGATE_ONLY = "aggregate-only"    # the server view's "view" under secure aggregation (theta_prev and the sum)


def summary_or_none(member_scores, nonmember_scores):
    """Metrics on the finite scores, or None when either side has none."""
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    m, n = m[~np.isnan(m)], n[~np.isnan(n)]
    if m.size == 0 or n.size == 0:
        return None
    return summarize(m, n)


def light_metrics(member_scores, nonmember_scores) -> dict:
    """AUC, TPR at 1% and 0.1% FPR and balanced accuracy, as :func:`fedaudit.metrics.summarize` computes them
    (same thresholds, NaN where an FPR is below 1 / non-members) but without intervals: per-client metrics
    of every round need only these four, and the intervals cost most of a summary."""
    import math

    from fedaudit.metrics import _auc_from_counts, roc_counts

    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    m, n = m[~np.isnan(m)], n[~np.isnan(n)]
    if m.size == 0 or n.size == 0:
        return headline_fields(None)
    c = roc_counts(m, n)
    out = {"auc": _auc_from_counts(c)}
    for name, target in (("tpr_at_1pct", 0.01), ("tpr_at_0_1pct", 0.001)):
        allowed = math.floor(target * c.n_nonmembers + 1e-9)
        out[name] = math.nan if allowed < 1 else \
            float(c.tpr[int(np.searchsorted(c.fp, allowed, side="right")) - 1])
    out["attack_accuracy"] = float(np.max((c.tpr + 1.0 - c.fpr) / 2.0))
    return out


def headline_fields(summary) -> dict:
    """The four headline numbers of a :class:`fedaudit.metrics.Summary` (None: all None), named as the run
    directory's schema names them (:data:`fedaudit.schema.HEADLINE_KEYS`)."""
    if summary is None:
        return {k: None for k in HEADLINE_KEYS}
    return {"auc": summary.auc, "tpr_at_1pct": summary.tpr_at_1pct, "tpr_at_0_1pct": summary.tpr_at_0_1pct,
            "attack_accuracy": summary.accuracy}


def skipped_result(attack: str, reason: str) -> dict:
    """A threat model's result in a round it could not attack, and why."""
    return {"attack": attack, **headline_fields(None), "skipped": reason, "clients": []}


__all__ = ["headline_fields", "light_metrics", "skipped_result", "summary_or_none"]
