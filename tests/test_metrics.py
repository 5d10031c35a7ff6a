"""Metrics on score distributions with known ROCs, ties, tiny sets, and JSON output."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, norm

from fedaudit.errors import AttackError
from fedaudit.metrics import auc, clopper_pearson, roc_curve, summarize
from fedaudit.slices import slice_metrics


def brute_auc(m, n):
    m, n = np.asarray(m, float)[:, None], np.asarray(n, float)[None, :]
    return float(np.mean((m > n) + 0.5 * (m == n)))


def brute_tpr_at(m, n, f):
    """Best TPR over thresholds 'member iff score > t' with FPR <= f."""
    m, n = np.asarray(m, float), np.asarray(n, float)
    best = 0.0
    for t in np.r_[np.unique(np.r_[m, n]), -np.inf]:
        if np.mean(n > t) <= f + 1e-12:
            best = max(best, float(np.mean(m > t)))
    return best


def gdp_epsilon(mu, delta):
    """epsilon(delta) of mu-Gaussian DP (two unit-variance Gaussians mu apart)."""
    lo, hi = 0.0, 50.0
    for _ in range(100):
        eps = (lo + hi) / 2
        d = norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
        lo, hi = (eps, hi) if d > delta else (lo, eps)
    return lo


@pytest.fixture(scope="module")
def gaussians():
    rng = np.random.default_rng(0)
    mu = 1.5
    return mu, rng.normal(mu, 1, 20000), rng.normal(0, 1, 20000)


def test_two_gaussians_match_closed_form(gaussians):
    mu, m, n = gaussians
    s = summarize(m, n)
    assert s.auc == pytest.approx(norm.cdf(mu / math.sqrt(2)), abs=0.01)
    for name, f in (("tpr_at_1pct", 0.01), ("tpr_at_0_1pct", 0.001)):
        exact = 1 - norm.cdf(norm.ppf(1 - f) - mu)
        got = getattr(s, name)
        low, high = getattr(s, name + "_ci")
        assert low <= got <= high
        # the threshold is itself estimated from the non-members: allow for its noise too
        assert got == pytest.approx(exact, rel=0.25)
        assert s.achieved_fpr[name] <= f
    assert s.accuracy == pytest.approx(norm.cdf(mu / 2), abs=0.01)
    assert s.advantage == pytest.approx(2 * norm.cdf(mu / 2) - 1, abs=0.02)
    assert s.advantage == pytest.approx(2 * s.accuracy - 1)
    # the empirical epsilon is a lower bound of the true one, the conservative end even more so
    true_eps = gdp_epsilon(mu, 1e-5)
    low, high = s.epsilon_lower_ci
    assert 0 < low <= s.epsilon_lower <= true_eps + 0.2
    assert s.epsilon_lower > 0.5 * true_eps
    assert s.unmeasurable == []
    assert s.ppv > 0.5


def test_roc_curve_shape_and_auc_agree(gaussians):
    _, m, n = gaussians
    fpr, tpr, thr = roc_curve(m[:500], n[:500])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thr) < 0)
    assert auc(m[:500], n[:500]) == pytest.approx(brute_auc(m[:500], n[:500]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=30), st.lists(st.integers(0, 5), min_size=1, max_size=30))
def test_ties_count_half_and_tpr_at_fpr_is_the_best_allowed(members, nonmembers):
    assert auc(members, nonmembers) == pytest.approx(brute_auc(members, nonmembers))
    s = summarize(members, nonmembers)
    assert s.auc == pytest.approx(brute_auc(members, nonmembers))
    fpr, tpr, _ = roc_curve(members, nonmembers)
    assert s.advantage == pytest.approx(np.max(tpr - fpr))
    big_n = list(nonmembers) * 100   # >= 100 non-members: 1% FPR is measurable
    s = summarize(members, big_n)
    assert s.tpr_at_1pct == pytest.approx(brute_tpr_at(members, big_n, 0.01))


def test_ties_at_the_threshold_count_as_nonmembers():
    # every member ties with the top non-member: no threshold lets members through without 20% FPR
    members = [5.0] * 10
    nonmembers = [5.0] * 20 + [0.0] * 80
    s = summarize(members, nonmembers)
    assert s.tpr_at_1pct == 0.0
    assert s.auc == pytest.approx((0.8 + 0.5 * 0.2))


def test_unmeasurable_fprs_are_reported_not_guessed():
    s = summarize(np.arange(50.0), np.arange(50.0) - 100)
    assert s.auc == 1.0
    assert math.isnan(s.tpr_at_1pct) and math.isnan(s.tpr_at_0_1pct) and math.isnan(s.tpr_at_0_01pct)
    assert set(s.unmeasurable) >= {"tpr_at_1pct", "tpr_at_0_1pct", "tpr_at_0_01pct"}
    assert s.min_measurable_fpr == pytest.approx(1 / 50)
    d = s.to_dict()
    assert d["tpr_at_1pct"] is None and d["tpr_at_1pct_ci"] == [None, None]
    s = summarize(np.arange(100.0), np.arange(100.0) - 1000)
    assert s.tpr_at_1pct == 1.0 and "tpr_at_1pct" not in s.unmeasurable
    assert math.isnan(s.tpr_at_0_1pct)


def test_tiny_equal_and_invalid_inputs():
    s = summarize([1.0], [0.0])
    assert s.auc == 1.0 and s.accuracy == 1.0 and s.n_members == 1
    s = summarize([3.0, 3.0], [3.0, 3.0, 3.0])
    assert s.auc == 0.5 and s.advantage == 0.0 and s.accuracy == 0.5
    assert any("equal" in note for note in s.notes)
    assert summarize([np.inf, 1.0], [-np.inf, 1.0]).auc == pytest.approx(0.875)
    with pytest.raises(AttackError, match="member_scores"):
        summarize([], [1.0])
    with pytest.raises(AttackError, match="nonmember_scores"):
        summarize([1.0], [])
    with pytest.raises(AttackError, match="NaN"):
        summarize([1.0, np.nan], [0.0])
    with pytest.raises(AttackError, match="alpha"):
        summarize([1.0], [0.0], alpha=1.5)


def test_to_dict_is_strict_json(gaussians):
    _, m, n = gaussians
    d = summarize(m[:300], n[:300]).to_dict(include_roc=True)
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert "roc" in back and len(back["roc"]["fpr"]) == len(back["roc"]["tpr"])
    assert "roc" not in summarize(m[:300], n[:300]).to_dict()
    for key in ("auc", "tpr_at_1pct", "tpr_at_0_1pct_ci", "accuracy", "advantage", "ppv", "epsilon_lower",
                "epsilon_lower_ci", "n_members", "n_nonmembers", "unmeasurable"):
        assert key in back


def test_clopper_pearson_matches_beta_quantiles():
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(beta.ppf(0.975, 1, 10)))
    assert clopper_pearson(10, 10) == (pytest.approx(beta.ppf(0.025, 10, 1)), 1.0)
    low, high = clopper_pearson(3, 20, alpha=0.1)
    assert low == pytest.approx(beta.ppf(0.05, 3, 18)) and high == pytest.approx(beta.ppf(0.95, 4, 17))


def test_epsilon_is_zero_without_signal_and_finite_with_perfect_separation():
    rng = np.random.default_rng(1)
    s = summarize(rng.normal(size=2000), rng.normal(size=2000))
    assert s.epsilon_lower_ci[0] < 0.3
    s = summarize(np.arange(1000.0) + 2000, np.arange(1000.0))
    assert math.isfinite(s.epsilon_lower_ci[0]) and s.epsilon_lower_ci[0] > 3
    assert s.tpr_at_0_1pct == 1.0


def test_slices_cover_classes_deciles_and_correctness():
    rng = np.random.default_rng(2)
    nm, nn = 300, 200
    ml, nl = rng.integers(0, 3, nm), rng.integers(0, 4, nn)     # class 3 has no members
    mloss, nloss = rng.exponential(0.5, nm), rng.exponential(1.0, nn)
    out = slice_metrics(-mloss, -nloss, ml, nl, mloss, nloss, rng.random(nm) < 0.9, rng.random(nn) < 0.7)
    kinds = [e["feature"] for e in out]
    assert kinds.count("all") == 1 and kinds.count("class") == 4 and kinds.count("loss_decile") == 10
    assert kinds.count("correct") == 2
    assert sum(e["n_members"] + e["n_nonmembers"] for e in out if e["feature"] == "loss_decile") == nm + nn
    empty = [e for e in out if e["feature"] == "class" and e["value"] == 3][0]
    assert empty["summary"] is None and empty["n_members"] == 0
    assert out[0]["summary"]["auc"] == pytest.approx(auc(-mloss, -nloss))
    json.dumps(out, allow_nan=False)
    with pytest.raises(AttackError, match="member_labels"):
        slice_metrics([1.0], [0.0], [0, 1], [0], [1.0], [1.0], [True], [True])


def test_metrics_and_attacks_import_no_tensorflow():
    code = ("import sys, fedaudit.metrics, fedaudit.slices, fedaudit.attacks; "
            "assert 'tensorflow' not in sys.modules and 'ray' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_epsilon_intervals_at_the_roc_corners_equal_those_over_every_threshold():
    from fedaudit.metrics import _epsilon_bound, _epsilon_from_counts, _epsilon_optimistic, clopper_pearson, roc_counts

    rng = np.random.default_rng(7)
    for trial in range(20):
        m = rng.normal(rng.uniform(0, 2), 1, rng.integers(5, 2000))
        n = rng.normal(0, 1, rng.integers(5, 2000))
        if trial % 2:
            m, n = np.round(m, 1), np.round(n, 1)            # ties
        c = roc_counts(m, n)
        tp_low, tp_high = clopper_pearson(c.tp, c.n_members)
        fp_low, fp_high = clopper_pearson(c.fp, c.n_nonmembers)
        every = {"point": _epsilon_bound(c.tpr, c.fpr, 1e-5), "low": _epsilon_bound(tp_low, fp_high, 1e-5),
                 "high": _epsilon_optimistic(tp_high, fp_low, 1e-5)}
        assert _epsilon_from_counts(c, 1e-5, 0.05) == every


# ---- risk levels (fedaudit.risk) -----------------------------------------------------------------------------


@pytest.mark.parametrize("metrics, level", [
    ({"auc": 0.71}, "high"), ({"auc": 0.55, "tpr_at_1pct": 0.12}, "high"),
    ({"auc": 0.60}, "moderate"), ({"auc": 0.52, "tpr_at_1pct": 0.03}, "moderate"),
    ({"auc": 0.53}, "low"), ({"auc": 0.51, "tpr_at_1pct": 0.02, "tpr_at_1pct_ci": [0.011, 0.04]}, "low"),
    ({"auc": 0.51, "tpr_at_1pct": 0.02, "tpr_at_1pct_ci": [0.005, 0.04]}, "negligible"),
    ({"auc": None}, None), ({}, None),
])
def test_risk_levels_from_the_headline_metrics(metrics, level):
    from fedaudit.risk import risk_level

    assert risk_level(metrics) == level


def test_risk_reads_a_view_summary_and_a_summary_dict_alike():
    from fedaudit.risk import empirical_epsilon, risk_level, worst_level
    from fedaudit.schema import ViewSummary

    s = summarize(np.linspace(1, 2, 300), np.linspace(0, 1, 300)).to_dict()
    view = ViewSummary.from_dict(s)
    assert risk_level(view) == risk_level(s) == "high"
    low, point = empirical_epsilon(view)
    assert low == s["epsilon_lower_ci"][0] and point == s["epsilon_lower"]
    assert all(math.isnan(x) for x in empirical_epsilon(None))
    assert worst_level(["low", None, "moderate", "negligible"]) == "moderate" and worst_level([None]) is None
