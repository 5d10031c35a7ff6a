"""Metrics of one threat model's scores, shared by the per-round audit and the aggregation across rounds.

NumPy only: summaries on the finite scores (:func:`summary_or_none`), the four headline numbers without
intervals (:func:`light_metrics`, per client and round), the attack reported at 1% FPR (:func:`low_fpr_choice`,
chosen out of fold) and the empty headline of a skipped view.
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


#: known non-members outside a fold needed to choose the low-FPR attack for it (fewer: the first attack)
MIN_KNOWN_NONMEMBERS = 50


def _tpr_at_low_fpr(scores: np.ndarray, member: np.ndarray, pool: np.ndarray) -> float:
    """TPR at 1% FPR, or with fewer than 100 non-members at one false positive (the lowest rate they measure)."""
    import math

    from fedaudit.metrics import roc_counts

    m, n = scores[member & pool], scores[~member & pool]
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    if m.size == 0 or n.size == 0:
        return -np.inf
    c = roc_counts(m, n)
    allowed = max(1, math.floor(0.01 * c.n_nonmembers + 1e-9))
    return float(c.tpr[int(np.searchsorted(c.fp, allowed, side="right")) - 1])


def _clearly_above(t: float, first: float, members: int) -> bool:
    """Whether TPR ``t`` beats the first attack's ``first`` by more than twice the standard error of their
    difference on ``members`` known members: with a few hundred known records, TPRs at one false positive differ
    by noise as much as by strength, and folds that switch on noise mix scales for nothing."""
    if not np.isfinite(t):
        return False
    if not np.isfinite(first):
        return True
    se = np.sqrt((t * (1 - t) + first * (1 - first)) / max(members, 1))
    return t - first > 2.0 * se


def low_fpr_choice(scores: dict, member, known, fold, scored=None, *,
                   min_nonmembers: int = MIN_KNOWN_NONMEMBERS) -> tuple[str, dict, np.ndarray]:
    """The attack that names the most members at 1% FPR, chosen per fold on the *other* folds' known records.

    ``scores``: {attack: per-record scores}, in headline-rank order (the first is the fallback and wins ties).
    The records of fold f get the scores of the attack with the highest TPR at 1% FPR on the known (``scored``)
    records outside f, whose scores are out of fold too, where it clearly beats the first attack there (by two
    standard errors; else the first); so no record's membership, known or not, chooses the
    attack that scores it, and the metrics on every record stay honest. Fewer than 100 known non-members outside
    f cannot measure 1%: the rate there is that of one false positive. A fold whose outside has fewer than
    ``min_nonmembers`` known non-members keeps the first attack.

    Returns (name, {fold: attack}, per-record scores). When the folds agree, the name is the attack's and the
    scores are its own; else each fold's scores are standardised by the known non-members outside it (the
    attacks' scales differ) and the name lists the attacks chosen.
    """
    names = list(scores)
    member = np.asarray(member, dtype=bool)
    known = np.asarray(known, dtype=bool)
    fold = np.asarray(fold)
    pool = known & (np.ones(member.size, dtype=bool) if scored is None else np.asarray(scored, dtype=bool))
    arrays = {a: np.asarray(scores[a], dtype=np.float64) for a in names}
    chosen = {}
    for f in np.unique(fold):
        outside = pool & (fold != f)
        best = names[0]
        if np.sum(outside & ~member) >= min_nonmembers:
            tpr = {a: _tpr_at_low_fpr(arrays[a], member, outside) for a in names}
            top = max(names, key=lambda a: tpr[a])       # the first of the best: ties go to the better-ranked
            if _clearly_above(tpr[top], tpr[names[0]], int(np.sum(outside & member))):
                best = top
        chosen[int(f)] = best
    picked = list(dict.fromkeys(a for a in names if a in chosen.values()))
    if len(picked) == 1:
        return picked[0], chosen, arrays[picked[0]].copy()
    out = np.full(member.size, np.nan)
    for f, a in chosen.items():
        here = np.flatnonzero(fold == f)
        out[here] = _quantiles(arrays[a][here])
    return " / ".join(picked) + " (chosen per fold)", chosen, out


def _quantiles(x: np.ndarray) -> np.ndarray:
    """Each finite score's quantile among the finite scores of its fold (ties: their mean; NaN stays NaN): one scale
    for attacks of different scales, from the fold's scores alone (folds are stratified by membership, so the
    same quantile means the same share of the fold in every fold)."""
    out = np.full(x.size, np.nan)
    ok = np.isfinite(x)
    if ok.any():
        from scipy.stats import rankdata

        out[ok] = rankdata(x[ok]) / ok.sum()
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


__all__ = ["headline_fields", "light_metrics", "low_fpr_choice", "skipped_result", "summary_or_none"]
