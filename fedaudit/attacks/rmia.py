"""RMIA (Zarifzadeh, Liu, Shokri, ICML 2024): pairwise likelihood ratios against population records.

p(x|theta) is the target's softmax probability of the true class; p(x) is its mean over reference models
(online: all of them, IN and OUT; offline: OUT models only, corrected to p(x) = ((1 + a) p_out(x) + (1 - a)) / 2
because OUT models alone underestimate it). For population records z (never trained on by the target),
p(z) is computed the same way. The score of x is the fraction of z with

    LR(x, z) = [p(x|theta) / p(x)] / [p(z|theta) / p(z)] >= gamma        (gamma = 1 by default).

Offline, ``a`` is chosen as the paper does: attack a reference model with the others (its training records
among the population are its members, the rest its non-members), for a in 0, 0.1, ..., 1, and keep the a
with the best AUC. We average that AUC over every reference model taken as the target in turn, which
needs the reference models' membership of the population records (``reference_population_in``); without
it, or with a single reference model, a falls back to ``default_a`` (0.3, ML Privacy Meter's default).

Within one target, the fraction is a non-decreasing function of r(x) = p(x|theta) / p(x): it is the
empirical distribution function of r(z) at r(x) / gamma. Records whose ratios exceed every r(z) / gamma (or
fall below all) tie at 1 (or 0), which leaves TPR at low FPR unmeasurable. ``tie_break`` (default on) adds
less than half a step 1/m ordered by r(x), so the ranking is exactly that of r(x) and the score still rounds
to the paper's fraction; set it off for the bare fraction.
"""

from __future__ import annotations

import logging

import numpy as np

from fedaudit.attacks.base import AttackInputs, register_score_attack
from fedaudit.attacks.scores import true_class_prob
from fedaudit.errors import AttackError
from fedaudit.metrics import auc

log = logging.getLogger(__name__)

A_GRID = tuple(np.round(np.arange(0.0, 1.0001, 0.1), 2))
DEFAULT_A = 0.3


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (like scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    ranks = np.empty(values.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _mean_over(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of ``values`` where ``mask``; NaN where a column has no entry."""
    count = mask.sum(axis=0)
    total = np.where(mask, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _p_marginal(p_ref: np.ndarray, in_mask: np.ndarray, offline: bool, a: float) -> np.ndarray:
    if not offline:
        return p_ref.mean(axis=0)
    p_out = _mean_over(p_ref, ~in_mask)
    return ((1.0 + a) * p_out + (1.0 - a)) / 2.0


def rmia_scores(p_x_target, p_x_ref, x_in, p_z_target, p_z_ref, z_in, *, offline: bool, a: float,
                gamma: float = 1.0, tie_break: bool = True) -> np.ndarray:
    """RMIA from true-class probabilities: target (n,), references (R, n); population (m,), (R, m)."""
    ratio_x = p_x_target / _p_marginal(p_x_ref, x_in, offline, a)
    ratio_z = p_z_target / _p_marginal(p_z_ref, z_in, offline, a)
    ratio_z = ratio_z[np.isfinite(ratio_z)]       # z with no OUT model (offline) cannot be used
    if ratio_z.size == 0:
        raise AttackError("attack 'rmia': no population record has a reference model that did not train on it")
    ordered = np.sort(ratio_z)
    # LR(x, z) >= gamma  <=>  ratio_z <= ratio_x / gamma
    count = np.searchsorted(ordered, ratio_x / gamma, side="right")
    scores = count / ordered.size
    if tie_break:
        scores = scores + (_average_ranks(ratio_x) / (ratio_x.size + 1)) / (2.0 * ordered.size)
    return scores


def tune_offline_a(p_pop_ref: np.ndarray, pop_in: np.ndarray | None, grid=A_GRID) -> tuple[float, dict]:
    """Choose a by attacking each reference model with the others on the population records.

    Returns (a, {a: mean AUC}); (DEFAULT_A, {}) when it cannot be tuned.
    """
    n_models = p_pop_ref.shape[0]
    if pop_in is None or n_models < 2:
        return DEFAULT_A, {}
    aucs: dict[float, list] = {float(a): [] for a in grid}
    for j in range(n_models):
        members = pop_in[j]
        others = np.delete(np.arange(n_models), j)
        p_out = _mean_over(p_pop_ref[others], ~pop_in[others])
        ok = np.isfinite(p_out)
        if members[ok].sum() == 0 or (~members[ok]).sum() == 0:
            continue
        for a in grid:
            ratio = p_pop_ref[j] / (((1.0 + a) * p_out + (1.0 - a)) / 2.0)
            aucs[float(a)].append(auc(ratio[ok & members], ratio[ok & ~members]))
    table = {a: float(np.mean(v)) for a, v in aucs.items() if v}
    if not table:
        return DEFAULT_A, {}
    best = max(table, key=lambda a: (table[a], -a))
    return best, table


def _run(inputs: AttackInputs, offline: bool, a, gamma, tie_break) -> np.ndarray:
    gamma = float(gamma)
    if not gamma > 0:
        raise AttackError(f"attack 'rmia': gamma must be positive, got {gamma}")
    p_x = true_class_prob(inputs.target_logits, inputs.labels)
    p_x_ref = true_class_prob(inputs.reference_logits, inputs.labels)
    p_z = true_class_prob(inputs.population_logits, inputs.population_labels)
    p_z_ref = true_class_prob(inputs.reference_population_logits, inputs.population_labels)
    z_in = inputs.population_in_mask()
    if offline and a is None:
        a, table = tune_offline_a(p_z_ref, inputs.reference_population_in)
        log.info("rmia-offline: a = %.2f (AUC by a: %s)", a, {k: round(v, 4) for k, v in table.items()})
    a = DEFAULT_A if a is None else float(a)
    if offline and not 0.0 <= a <= 1.0:
        raise AttackError(f"attack 'rmia-offline': a must be in [0, 1], got {a}")
    return rmia_scores(p_x, p_x_ref, inputs.in_mask(), p_z, p_z_ref, z_in, offline=offline, a=a,
                       gamma=gamma, tie_break=tie_break)


@register_score_attack("rmia-offline", needs=("population", "reference_out", "reference_population"),
                       aliases=("rmia",), rank=50)
def rmia_offline(inputs: AttackInputs, a: float | None = None, gamma: float = 1.0,
                 tie_break: bool = True) -> np.ndarray:
    """RMIA offline (Zarifzadeh et al. 2024): OUT reference models, p(x) corrected by a (tuned)."""
    return _run(inputs, True, a, gamma, tie_break)


@register_score_attack("rmia-online", needs=("population", "reference_in", "reference_out", "reference_population"),
                       rank=30)
def rmia_online(inputs: AttackInputs, gamma: float = 1.0, tie_break: bool = True) -> np.ndarray:
    """RMIA online (Zarifzadeh et al. 2024): p(x) is the mean over IN and OUT reference models."""
    return _run(inputs, False, None, gamma, tie_break)
