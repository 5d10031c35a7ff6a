"""Metrics of one threat model's scores, shared by the per-round audit and the aggregation across rounds.

NumPy (and SciPy's incomplete beta function) only: summaries on the finite scores (:func:`summary_or_none`),
the four headline numbers without intervals (:func:`light_metrics`, per client and round), the attack reported
at 1% FPR (:func:`low_fpr_choice`, chosen on the known records at a smoothed 2% FPR, measured on the others)
and the empty headline of a skipped view.
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


#: known non-members needed to choose the low-FPR attack on them (fewer: the first attack)
MIN_KNOWN_NONMEMBERS = 50

#: the false-positive rate the choice compares attacks at, on the known records: 2%, twice the reported rate.
#: With 100-225 known non-members 1% is their one or two highest scores, and which attack has the highest
#: TPR there is mostly which had the luckiest non-member. On 34 rounds and aggregations of overfit.toml and
#: purchase-small.toml runs (seeds 0 and 1, its attacks then loss and blackbox only;
#: ``simulations/low_fpr_headline.py``), the attack chosen at 2% from
#: the smoothed quantile named at 1% FPR on the unknown records as many members as the best single attack
#: there in 17, and 0.6 points fewer on average; the former rule (1%, one order statistic): 16 and 1.1 points;
#: 2% unsmoothed 15 and 0.8; 1% smoothed 13 and 1.6. On 16 of fresh seed 7: 5 and 1.1 points, the former rule
#: 7 and 1.1: neither rule makes the reported rate the best single attack's, and with 100-225 unknown
#: non-members the best single attack's own rate is the highest of several noisy ones. Where one attack leads by
#: far the choice finds it: purchase-small.toml with the whitebox attack, seeds 21-24, 19 of 24 as many as the
#: best single attack (all 12 of the server's), against 9 of 24 with loss and blackbox only. An attack whose
#: advantage lies only below 2% can lose the choice for it
CHOICE_FPR = 0.02


def harrell_davis_quantile(values: np.ndarray, q: float) -> float:
    """The Harrell-Davis estimate of the ``q`` quantile: a Beta-weighted mean of every order statistic, not the
    one order statistic the plain quantile reads (in the tail of 150 normal values, 98%: about 10% nearer the
    true quantile in root-mean-square error)."""
    from scipy.special import betainc

    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    a, b = (n + 1) * q, (n + 1) * (1.0 - q)
    edges = betainc(a, b, np.arange(n + 1) / n)
    return float(np.dot(np.diff(edges), x))


def tail_rate(scores: np.ndarray, member: np.ndarray, pool: np.ndarray, fpr: float = CHOICE_FPR) -> float:
    """The share of the pool's members scored above the Harrell-Davis estimate of the pool's non-members'
    (1 - ``fpr``) quantile (-inf with no finite member or non-member)."""
    m, n = scores[member & pool], scores[~member & pool]
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    if m.size == 0 or n.size == 0:
        return -np.inf
    return float(np.mean(m > harrell_davis_quantile(n, 1.0 - fpr)))


def low_fpr_choice(scores: dict, member, known, scored=None, *,
                   min_nonmembers: int = MIN_KNOWN_NONMEMBERS) -> tuple[str, np.ndarray]:
    """(the attack that names the most members at low FPR on the adversary's known records, the records to
    report it on: the others).

    ``scores``: {attack: per-record scores, out of fold}, in headline-rank order (the first is the fallback and
    wins ties). The adversary tunes on the records whose membership it knows and attacks the rest, as a real one
    would: the choice reads the known (``scored``) records only and its metrics are on the unknown ones, so no
    scored record's membership chooses the attack that scores it. (Choosing per cross-fitting fold and reporting
    on every record was measured too: folds that choose differently mix attacks whose tails differ, and the mix
    named fewer members at 1% FPR than the headline.) The attacks are compared by :func:`tail_rate` at
    :data:`CHOICE_FPR`: the TPR at 1% of a hundred known non-members is that of their highest score alone.
    Fewer than ``min_nonmembers`` known non-members keep the first attack.
    """
    names = list(scores)
    member = np.asarray(member, dtype=bool)
    known = np.asarray(known, dtype=bool)
    scored = np.ones(member.size, dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
    pool = known & scored
    best = names[0]
    if np.sum(pool & ~member) >= min_nonmembers:
        rate = {a: tail_rate(np.asarray(scores[a], dtype=np.float64), member, pool) for a in names}
        best = max(names, key=lambda a: rate[a])        # the first of the best: ties go to the better-ranked
    return best, scored & ~known


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


__all__ = ["harrell_davis_quantile", "headline_fields", "light_metrics", "low_fpr_choice", "skipped_result",
           "summary_or_none", "tail_rate"]
