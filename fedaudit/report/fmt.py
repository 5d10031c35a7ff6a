"""Number formatting shared by the report, the narrative and the comparison (the risk levels are
:mod:`fedaudit.risk`'s)."""

from __future__ import annotations

import html
import math

from fedaudit.risk import LEVEL_RULES, LEVEL_TEXT, LEVEL_WHY, num


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


def level_rules_html() -> str:
    """The risk levels, their thresholds and why those thresholds: the one place a report defines them."""
    rules = "".join(f"<li><strong>{esc(LEVEL_TEXT[lv])}</strong>: {esc(text)}</li>" for lv, text in LEVEL_RULES)
    return f"<ul>{rules}</ul><p><strong>Why these thresholds.</strong> {esc(LEVEL_WHY)}</p>"


def ranges(rounds: list[int]) -> str:
    """Sorted round numbers as runs: [1, 2, 3, 5] -> '1-3, 5'."""
    out, start = [], None
    for i, r in enumerate(rounds):
        if start is None:
            start = r
        if i + 1 == len(rounds) or rounds[i + 1] != r + 1:
            out.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ", ".join(out)


__all__ = ["level_rules_html", "num", "finite", "esc", "f3", "pct", "pct_ci", "eps", "count", "one_in", "ranges"]
