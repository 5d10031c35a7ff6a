"""Risk levels from a threat model's headline metrics, and the empirical epsilon a metrics summary implies.

The thresholds live here, beside the metrics (:mod:`fedaudit.metrics`) they read; the report, the comparison, the
console lines and the ``privacy`` object of summary.json import them from here. A summary is a metrics mapping
(:meth:`fedaudit.metrics.Summary.to_dict`, a view's ``summary`` in rounds.jsonl) or an object with one under
``metrics`` (:class:`fedaudit.schema.ViewSummary`). No NumPy, no TensorFlow.
"""

from __future__ import annotations

import math

#: the levels, lowest first; the thresholds are stated in the report's "How to read" section (LEVEL_RULES)
LEVELS = ("negligible", "low", "moderate", "high")
LEVEL_TEXT = {
    "negligible": "not distinguishable from guessing",
    "low": "low",
    "moderate": "moderate",
    "high": "high",
}
#: AUC at or above which a level is reached (or the TPR at 1% FPR below)
AUC_HIGH, AUC_MODERATE, AUC_LOW = 0.70, 0.60, 0.53
#: share of members identified at 1% FPR at or above which a level is reached
TPR1_HIGH, TPR1_MODERATE = 0.10, 0.03
#: the lower end of the TPR at 1% FPR's 95% interval above this beats guessing (the FPR itself)
TPR1_CHANCE = 0.01
LEVEL_RULES = (
    ("high", "AUC at least 0.70, or at least 10% of members identified at 1% FPR"),
    ("moderate", "AUC at least 0.60, or at least 3% of members identified at 1% FPR"),
    ("low", "AUC at least 0.53, or the 95% interval of the TPR at 1% FPR lies above 1% (better than guessing)"),
    ("negligible", "none of the above: the attack did not measurably beat guessing"),
)

#: why these thresholds: stated once, under the rules, in the report's "How to read" section
LEVEL_WHY = (
    "An AUC of 0.5 is guessing. Below 0.53 the attack's advantage is within what the audits' sample sizes measure as "
    "noise; 0.60 and 0.70 are the AUCs at which membership attacks in the literature are usually called weak and "
    "strong. The AUC is an average over all records, so the levels also read the share of members identified at "
    "1% false positives (Carlini et al., 2022): a guessing attacker identifies 1%; 3 times that (3%) singles out "
    "a measurable group of people, 10 times (10%) a large one. A level is reached by either measure, so an attack "
    "that is weak on average but sure about a few records is not rated low; the share at 1% FPR is the larger of "
    "the headline attack's and that of the attack reported at that rate.")


def _metrics(summary) -> dict:
    if summary is None:
        return {}
    metrics = getattr(summary, "metrics", summary)
    return metrics if isinstance(metrics, dict) else {}


def num(v) -> float:
    """A JSON value as a float (None and junk: NaN)."""
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _low_end(ci) -> float:
    return num(ci[0]) if isinstance(ci, (list, tuple)) and ci else math.nan


def empirical_epsilon(summary) -> tuple[float, float]:
    """(conservative 95% lower bound, point estimate) of a summary's empirical epsilon (NaN when absent).

    The conservative end (TPR at its lower, FPR at its upper Clopper-Pearson end) is the number to quote:
    the point estimate is a maximum over thresholds and small counts at the tails inflate it.
    """
    m = _metrics(summary)
    if not m:
        return math.nan, math.nan
    return _low_end(m.get("epsilon_lower_ci")), num(m.get("epsilon_lower"))


def risk_level(summary, low_fpr=None) -> str | None:
    """The level of one threat model's headline summary (None if it has no AUC).

    ``low_fpr``: the metrics of the attack reported at 1% FPR where one was chosen for that rate (measured on the
    records the adversary did not know); the TPR at 1% FPR that counts is the larger of the two attacks', so that
    the level never reads a lower rate than the one the report states."""
    m = _metrics(summary)
    auc = num(m.get("auc"))
    if not math.isfinite(auc):
        return None
    tpr1 = num(m.get("tpr_at_1pct"))
    ci_low = _low_end(m.get("tpr_at_1pct_ci"))
    low = _metrics(low_fpr)
    if low:
        tpr1 = max((v for v in (tpr1, num(low.get("tpr_at_1pct"))) if math.isfinite(v)), default=math.nan)
        ci_low = max((v for v in (ci_low, _low_end(low.get("tpr_at_1pct_ci"))) if math.isfinite(v)), default=math.nan)
    if auc >= AUC_HIGH or (math.isfinite(tpr1) and tpr1 >= TPR1_HIGH):
        return "high"
    if auc >= AUC_MODERATE or (math.isfinite(tpr1) and tpr1 >= TPR1_MODERATE):
        return "moderate"
    if auc >= AUC_LOW or (math.isfinite(ci_low) and ci_low > TPR1_CHANCE):
        return "low"
    return "negligible"


def worst_level(levels) -> str | None:
    levels = [lv for lv in levels if lv]
    return max(levels, key=LEVELS.index) if levels else None


__all__ = ["AUC_HIGH", "AUC_LOW", "AUC_MODERATE", "LEVELS", "LEVEL_RULES", "LEVEL_TEXT", "LEVEL_WHY", "TPR1_CHANCE", "TPR1_HIGH",
           "TPR1_MODERATE", "empirical_epsilon", "num", "risk_level", "worst_level"]
