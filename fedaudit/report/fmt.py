"""Number formatting and risk levels shared by the report, the narrative and the comparison."""

from __future__ import annotations

import html
import math

# Risk levels from the headline numbers; the thresholds are stated in the report's "How to read" section.
LEVELS = ("negligible", "low", "moderate", "high")
LEVEL_TEXT = {
    "negligible": "not distinguishable from guessing",
    "low": "low",
    "moderate": "moderate",
    "high": "high",
}
LEVEL_RULES = (
    ("high", "AUC at least 0.70, or at least 10% of members identified at 1% FPR"),
    ("moderate", "AUC at least 0.60, or at least 3% of members identified at 1% FPR"),
    ("low", "AUC at least 0.53, or the 95% interval of the TPR at 1% FPR lies above 1% (better than guessing)"),
    ("negligible", "none of the above: the attack did not measurably beat guessing"),
)


def num(v) -> float:
    """A JSON value as a float (None and junk: NaN)."""
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def finite(v) -> bool:
    return math.isfinite(num(v))


def esc(s) -> str:
    return html.escape(str(s), quote=True)


def f3(v, digits: int = 3) -> str:
    v = num(v)
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def pct(v, digits: int | None = None) -> str:
    """0.0825 -> '8.3%' (more digits for small rates)."""
    v = num(v)
    if not math.isfinite(v):
        return "n/a"
    p = 100 * v
    if digits is None:
        digits = 1 if (p >= 1 or p == 0) else 2
    return f"{p:.{digits}f}%"


def pct_ci(ci) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or not (finite(ci[0]) and finite(ci[1])):
        return ""
    return f"{pct(ci[0])} to {pct(ci[1])}"


def eps(v) -> str:
    v = num(v)
    if math.isinf(v):
        return "infinite"
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def count(n) -> str:
    v = num(n)
    return f"{int(v):,}" if math.isfinite(v) else "n/a"


def one_in(fpr: float) -> str:
    """0.01 -> '1 in 100'."""
    return f"1 in {int(round(1 / fpr)):,}"


def empirical_epsilon(summary: dict | None) -> tuple[float, float]:
    """(conservative 95% lower bound, point estimate) of a summary's empirical epsilon (NaN when absent).

    The conservative end (TPR at its lower, FPR at its upper Clopper-Pearson end) is the number to quote:
    the point estimate is a maximum over thresholds and small counts at the tails inflate it.
    """
    if not summary:
        return math.nan, math.nan
    point = num(summary.get("epsilon_lower"))
    ci = summary.get("epsilon_lower_ci")
    low = num(ci[0]) if isinstance(ci, (list, tuple)) and ci else math.nan
    return low, point


def risk_level(summary: dict | None) -> str | None:
    """The level of one threat model's headline summary dict (None if it has no AUC)."""
    if not summary or not finite(summary.get("auc")):
        return None
    auc = num(summary.get("auc"))
    tpr1 = num(summary.get("tpr_at_1pct"))
    ci = summary.get("tpr_at_1pct_ci") or [None, None]
    ci_low = num(ci[0]) if isinstance(ci, (list, tuple)) and ci else math.nan
    if auc >= 0.70 or (math.isfinite(tpr1) and tpr1 >= 0.10):
        return "high"
    if auc >= 0.60 or (math.isfinite(tpr1) and tpr1 >= 0.03):
        return "moderate"
    if auc >= 0.53 or (math.isfinite(ci_low) and ci_low > 0.01):
        return "low"
    return "negligible"


def worst_level(levels) -> str | None:
    levels = [lv for lv in levels if lv]
    return max(levels, key=LEVELS.index) if levels else None


__all__ = ["num", "finite", "esc", "f3", "pct", "pct_ci", "eps", "count", "one_in", "risk_level", "worst_level",
           "empirical_epsilon",
           "LEVELS", "LEVEL_TEXT", "LEVEL_RULES"]
