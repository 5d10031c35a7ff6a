"""Metrics of a membership-inference attack from its scores (higher score = more likely a member).

NumPy only (SciPy for Beta quantiles); no TensorFlow. One entry point, :func:`summarize`, returns a
:class:`Summary` that the auditor, the reports and users' notebooks all read.

Conventions (those of Carlini et al. 2022, "Membership Inference Attacks From First Principles", for the ROC
and TPR at low FPR; Jagielski et al. 2020 for the empirical epsilon):

- The ROC sweeps a threshold ``t`` over the distinct scores and predicts "member" when ``score >= t``;
  AUC counts ties half (the Mann-Whitney statistic).
- TPR at a fixed FPR ``f`` uses the strictest threshold that lets through at most ``floor(f * n)`` of the
  ``n`` non-members (the threshold sits at the (1 - f)-quantile of the non-member scores; records tied
  with it count as predicted non-members). With fewer than ``1 / f`` non-members that FPR cannot be
  measured: the TPR is NaN (``None`` in :meth:`Summary.to_dict`) and ``unmeasurable`` names it.
- Clopper-Pearson intervals at level ``1 - alpha`` for every rate.
- The empirical epsilon at ``delta`` (Jagielski et al. 2020): any (epsilon, delta)-DP training forces
  ``TPR <= e^eps FPR + delta`` and ``1 - FPR <= e^eps (1 - TPR) + delta`` at every threshold, so
  ``eps >= max(ln((TPR - delta) / FPR), ln((1 - delta - FPR) / (1 - TPR)))``. ``epsilon_lower`` takes the
  rates as measured (thresholds where a ratio has a zero denominator are skipped); ``epsilon_lower_ci``
  is (the bound with TPR at its lower and FPR at its upper Clopper-Pearson end, the bound with them the
  other way round). The low end is the number to quote when auditing DP training. It is a maximum
  over thresholds chosen on the same scores, so strictly speaking it is optimistic by a
  multiple-comparison factor; pick the threshold on held-out scores for a formal audit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
from scipy.special import betaincinv

from fedaudit.errors import AttackError

# Target false-positive rates of the headline metrics: (field suffix, FPR).
TARGET_FPRS = (("1pct", 0.01), ("0_1pct", 0.001), ("0_01pct", 0.0001))

# FPR grid of the compact ROC that to_dict(include_roc=True) writes (log-spaced at the low end).
ROC_GRID = np.unique(np.concatenate([np.logspace(-5, -1, 17), np.linspace(0.1, 1.0, 19)]))


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def _as_scores(scores, name: str, allow_empty: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise AttackError(f"{name}: scores must be numbers, got {type(scores).__name__} ({exc})") from None
    if arr.size == 0 and not allow_empty:
        raise AttackError(f"{name}: no scores; need at least one member and one non-member score")
    if np.isnan(arr).any():
        raise AttackError(
            f"{name}: {int(np.isnan(arr).sum())} of {arr.size} scores are NaN; "
            f"scores must be numbers or +-inf (an attack that cannot score a record should say so instead)"
        )
    return arr


def _check_level(value: float, name: str, low: float, high: float) -> float:
    value = float(value)
    if not (low < value < high):
        raise AttackError(f"{name}: must be in ({low}, {high}), got {value}")
    return value


# --------------------------------------------------------------------------------------------------
# ROC and AUC
# --------------------------------------------------------------------------------------------------


@dataclass
class RocCounts:
    """Cumulative counts at each distinct threshold, strictest first (first row: nothing predicted member)."""

    thresholds: np.ndarray   # +inf, then distinct scores in decreasing order; predict member if score >= t
    tp: np.ndarray           # members with score >= t
    fp: np.ndarray           # non-members with score >= t
    n_members: int
    n_nonmembers: int

    @property
    def tpr(self) -> np.ndarray:
        return self.tp / self.n_members

    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.n_nonmembers


def roc_counts(member_scores, nonmember_scores) -> RocCounts:
    """True- and false-positive counts at every distinct threshold (ties move together)."""
    member = _as_scores(member_scores, "member_scores")
    nonmember = _as_scores(nonmember_scores, "nonmember_scores")
    scores = np.concatenate([member, nonmember])
    is_member = np.concatenate([np.ones(member.size, dtype=np.int64), np.zeros(nonmember.size, dtype=np.int64)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_member = scores[order], is_member[order]
    # Last index of each run of equal scores (compare values, not differences: inf - inf is NaN).
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    tp = np.cumsum(is_member)[last]
    fp = (last + 1) - tp
    return RocCounts(
        thresholds=np.r_[np.inf, scores[last]],
        tp=np.r_[0, tp],
        fp=np.r_[0, fp],
        n_members=int(member.size),
        n_nonmembers=int(nonmember.size),
    )


def roc_curve(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) from (0, 0) to (1, 1); predict member when ``score >= threshold``."""
    c = roc_counts(member_scores, nonmember_scores)
    return c.fpr, c.tpr, c.thresholds


def auc(member_scores, nonmember_scores) -> float:
    """Area under the ROC: P(member score > non-member score) + 0.5 * P(tie)."""
    c = roc_counts(member_scores, nonmember_scores)
    return _auc_from_counts(c)


def auc_interval(auc_value: float, n_members: int, n_nonmembers: int, z: float = 1.959964) -> tuple:
    """Hanley and McNeil's (1982) normal interval of an AUC measured on ``n_members`` members and ``n_nonmembers``
    non-members (95% by default), clipped to [0, 1]."""
    a, n1, n0 = float(auc_value), int(n_members), int(n_nonmembers)
    if not math.isfinite(a) or n1 < 1 or n0 < 1:
        return (math.nan, math.nan)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt(max(a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a), 0) / (n1 * n0))
    return max(0.0, a - z * se), min(1.0, a + z * se)


def _auc_from_counts(c: RocCounts) -> float:
    # Trapezoids between consecutive ROC points count tied pairs half.
    fpr, tpr = c.fpr, c.tpr
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


# --------------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------------


def clopper_pearson(k, n, alpha: float = 0.05) -> tuple:
    """Two-sided Clopper-Pearson interval at level 1 - alpha for k successes in n trials (arrays allowed)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, betaincinv(k, n - k + 1, alpha / 2), 0.0)
        high = np.where(k < n, betaincinv(k + 1, n - k, 1 - alpha / 2), 1.0)
    low = np.where(n > 0, low, np.nan)
    high = np.where(n > 0, high, np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


# --------------------------------------------------------------------------------------------------
# Empirical epsilon
# --------------------------------------------------------------------------------------------------


def _epsilon_bound(tpr: np.ndarray, fpr: np.ndarray, delta: float) -> float:
    """max over thresholds of the DP lower bound on epsilon; ratios with a zero denominator are skipped."""
    with np.errstate(divide="ignore", invalid="ignore"):
        one = np.where((fpr > 0) & (tpr - delta > 0), np.log((tpr - delta) / fpr), -np.inf)
        two = np.where((tpr < 1) & (1 - delta - fpr > 0), np.log((1 - delta - fpr) / (1 - tpr)), -np.inf)
    best = float(np.max(np.maximum(one, two))) if tpr.size else -np.inf
    return max(best, 0.0)


def _epsilon_optimistic(tpr, fpr, delta) -> float:
    """Like _epsilon_bound, but a zero denominator with a positive numerator gives +inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        one = np.where(tpr - delta > 0, np.log((tpr - delta) / fpr), -np.inf)
        two = np.where(1 - delta - fpr > 0, np.log((1 - delta - fpr) / (1 - tpr)), -np.inf)
    best = float(np.nanmax(np.maximum(one, two))) if tpr.size else -np.inf
    return max(best, 0.0)


def empirical_epsilon(member_scores, nonmember_scores, *, delta: float = 1e-5, alpha: float = 0.05) -> dict:
    """Lower bound on epsilon at ``delta`` from the attack's ROC: point value and Clopper-Pearson interval."""
    c = roc_counts(member_scores, nonmember_scores)
    return _epsilon_from_counts(c, delta, alpha)


def _epsilon_from_counts(c: RocCounts, delta: float, alpha: float) -> dict:
    # Both bounds grow with the true positives and shrink with the false positives, so over the ROC's thresholds
    # they peak at its corners: for each false-positive count, the threshold with the most true positives. The
    # intervals (the costly part) are computed there only; the maxima are the same as over every threshold.
    corner = np.flatnonzero(np.r_[c.fp[1:] != c.fp[:-1], True])
    tp, fp = c.tp[corner], c.fp[corner]
    tp_low, tp_high = clopper_pearson(tp, c.n_members, alpha)
    fp_low, fp_high = clopper_pearson(fp, c.n_nonmembers, alpha)
    return {
        "point": _epsilon_bound(c.tpr, c.fpr, delta),
        "low": _epsilon_bound(np.asarray(tp_low), np.asarray(fp_high), delta),
        "high": _epsilon_optimistic(np.asarray(tp_high), np.asarray(fp_low), delta),
    }


# --------------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """Every metric of one attack on one target, with intervals. ``to_dict`` is JSON-safe."""

    n_members: int
    n_nonmembers: int
    auc: float
    tpr_at_1pct: float
    tpr_at_1pct_ci: tuple
    tpr_at_0_1pct: float
    tpr_at_0_1pct_ci: tuple
    tpr_at_0_01pct: float
    tpr_at_0_01pct_ci: tuple
    accuracy: float            # balanced accuracy at the best threshold
    accuracy_threshold: float
    advantage: float           # max over thresholds of TPR - FPR (= 2 * accuracy - 1)
    ppv: float                 # TP / (TP + FP) at the 1% FPR threshold, with this set's member ratio
    ppv_ci: tuple
    epsilon_lower: float       # empirical epsilon from the measured rates
    epsilon_lower_ci: tuple    # (conservative Clopper-Pearson bound, optimistic bound)
    epsilon_delta: float
    alpha: float               # intervals are at confidence 1 - alpha
    min_measurable_fpr: float  # 1 / n_nonmembers
    unmeasurable: list = field(default_factory=list)   # metric names that these set sizes cannot measure
    achieved_fpr: dict = field(default_factory=dict)   # metric name -> FPR actually reached (<= target)
    thresholds: dict = field(default_factory=dict)     # metric name -> score threshold (member if score > it)
    notes: list = field(default_factory=list)
    roc: tuple = field(default=(np.zeros(0), np.zeros(0)), repr=False)   # (fpr, tpr), full resolution
    slices: list | None = None  # per-slice results (fedaudit.slices), when computed

    def tpr_at(self, fpr: float) -> float:
        """TPR at an arbitrary FPR from the stored ROC (NaN below 1 / n_nonmembers)."""
        fprs, tprs = self.roc
        if fpr * self.n_nonmembers < 1 - 1e-9:
            return math.nan
        ok = fprs <= fpr + 1e-12
        return float(tprs[ok].max()) if ok.any() else 0.0

    def roc_compact(self, grid=ROC_GRID) -> dict:
        """The ROC at a fixed FPR grid (largest TPR with FPR <= each grid point; NaN where unmeasurable)."""
        grid = np.asarray(grid, dtype=np.float64)
        return {"fpr": [float(g) for g in grid], "tpr": [_json_float(self.tpr_at(float(g))) for g in grid]}

    def to_dict(self, include_roc: bool = False) -> dict:
        """JSON-safe: floats, NaN and inf as None, tuples as lists; the ROC only compactly and on request."""
        out = {}
        for f in fields(self):
            if f.name in ("roc", "slices"):
                continue
            out[f.name] = _json_value(getattr(self, f.name))
        if self.slices is not None:
            out["slices"] = _json_value(self.slices)
        if include_roc:
            out["roc"] = self.roc_compact()
        return out


def _json_float(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _json_value(v):
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return _json_float(v)
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()]
    return v


def summarize(member_scores, nonmember_scores, *, delta: float = 1e-5, alpha: float = 0.05) -> Summary:
    """All metrics of an attack from its scores on members and non-members (higher = member).

    Raises :class:`~fedaudit.errors.AttackError` when either side is empty or a score is NaN.
    """
    delta = float(delta)
    if not (0.0 <= delta < 1.0):
        raise AttackError(f"delta: must be in [0, 1), got {delta}")
    alpha = _check_level(alpha, "alpha", 0.0, 1.0)
    c = roc_counts(member_scores, nonmember_scores)
    n1, n0 = c.n_members, c.n_nonmembers
    tpr, fpr = c.tpr, c.fpr
    notes: list[str] = []
    unmeasurable: list[str] = []
    values: dict = {}
    achieved: dict = {}
    thresholds: dict = {}
    idx_1pct = None
    for suffix, target in TARGET_FPRS:
        name = f"tpr_at_{suffix}"
        allowed_fp = math.floor(target * n0 + 1e-9)
        if allowed_fp < 1:
            values[name] = math.nan
            values[name + "_ci"] = (math.nan, math.nan)
            unmeasurable.append(name)
            notes.append(f"{name}: FPR {target:g} is below 1/{n0} non-members; not measurable")
            continue
        i = int(np.searchsorted(c.fp, allowed_fp, side="right")) - 1
        values[name] = float(tpr[i])
        values[name + "_ci"] = clopper_pearson(int(c.tp[i]), n1, alpha)
        achieved[name] = float(fpr[i])
        # Predict member iff score > the next (weaker) threshold; at the strictest point nothing passes.
        thresholds[name] = float(c.thresholds[i + 1]) if i + 1 < c.thresholds.size else -math.inf
        if suffix == "1pct":
            idx_1pct = i
    if idx_1pct is not None:
        predicted = int(c.tp[idx_1pct] + c.fp[idx_1pct])
        ppv = c.tp[idx_1pct] / predicted if predicted else math.nan
        ppv_ci = clopper_pearson(int(c.tp[idx_1pct]), predicted, alpha) if predicted else (math.nan, math.nan)
        if not predicted:
            notes.append("ppv: no record passes the 1% FPR threshold")
    else:
        ppv, ppv_ci = math.nan, (math.nan, math.nan)
        unmeasurable.append("ppv")
    balanced = (tpr + 1.0 - fpr) / 2.0
    best = int(np.argmax(balanced))
    if c.thresholds.size == 2:
        notes.append("all scores are equal: the attack cannot tell members from non-members")
    eps = _epsilon_from_counts(c, delta, alpha)
    return Summary(
        n_members=n1,
        n_nonmembers=n0,
        auc=_auc_from_counts(c),
        tpr_at_1pct=values["tpr_at_1pct"],
        tpr_at_1pct_ci=values["tpr_at_1pct_ci"],
        tpr_at_0_1pct=values["tpr_at_0_1pct"],
        tpr_at_0_1pct_ci=values["tpr_at_0_1pct_ci"],
        tpr_at_0_01pct=values["tpr_at_0_01pct"],
        tpr_at_0_01pct_ci=values["tpr_at_0_01pct_ci"],
        accuracy=float(balanced[best]),
        accuracy_threshold=float(c.thresholds[best]),
        advantage=float(np.max(tpr - fpr)),
        ppv=float(ppv),
        ppv_ci=tuple(ppv_ci),
        epsilon_lower=eps["point"],
        epsilon_lower_ci=(eps["low"], eps["high"]),
        epsilon_delta=delta,
        alpha=alpha,
        min_measurable_fpr=1.0 / n0,
        unmeasurable=unmeasurable,
        achieved_fpr=achieved,
        thresholds=thresholds,
        notes=notes,
        roc=(fpr, tpr),
    )


def auc_standard_error(auc: float, n_members: int, n_nonmembers: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUC measured on ``n_members`` and ``n_nonmembers`` records
    (NaN when either count is missing): what lets the report test whether per-round AUCs differ beyond noise."""
    a, n1, n0 = float(auc), float(n_members), float(n_nonmembers)
    if not (math.isfinite(a) and math.isfinite(n1) and math.isfinite(n0)) or n1 < 1 or n0 < 1:
        return math.nan
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0)
    return math.sqrt(max(var, 1e-12))


@dataclass
class TrendTest:
    """A weighted least-squares slope of a metric over rounds, tested against no trend (two-sided z test).

    Each round's value is weighted by its inverse variance. The rounds' AUCs are measured on the same records, so
    their errors are positively correlated; treating them as independent overstates the slope's variance, which
    makes the test conservative (it claims a trend less often, never more)."""

    slope: float               # per round
    slope_se: float
    p_value: float
    alpha: float

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p_value) and self.p_value < self.alpha


def two_sided_p(z: float) -> float:
    """The two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2.0)) if math.isfinite(z) else math.nan


def trend_test(x, y, se, *, alpha: float = 0.05) -> TrendTest:
    """The slope of ``y`` over ``x`` with standard errors ``se``, and whether it differs from zero at ``alpha``."""
    x, y, se = (np.asarray(v, dtype=np.float64) for v in (x, y, se))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(se) & (se > 0)
    x, y, w = x[ok], y[ok], 1.0 / se[ok] ** 2
    if x.size < 3 or np.ptp(x) == 0:
        return TrendTest(math.nan, math.nan, math.nan, alpha)
    xm = np.sum(w * x) / np.sum(w)
    sxx = np.sum(w * (x - xm) ** 2)
    slope = float(np.sum(w * (x - xm) * y) / sxx)
    slope_se = float(1.0 / math.sqrt(sxx))
    return TrendTest(slope, slope_se, two_sided_p(slope / slope_se), alpha)


__all__ = [
    "Summary", "summarize", "roc_curve", "roc_counts", "RocCounts", "auc", "clopper_pearson",
    "empirical_epsilon", "TARGET_FPRS", "TrendTest", "auc_standard_error",
    "trend_test", "two_sided_p",
]
