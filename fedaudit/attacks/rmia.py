"""RMIA (Zarifzadeh, Liu, Shokri, ICML 2024): pairwise likelihood ratios against population records.

p(x|theta) is the target's softmax probability of the true class at temperature T (``softmax(z / T)``); p(x) is
its mean over reference models (online: all of them, IN and OUT; offline: OUT models only, corrected to
p(x) = ((1 + a) p_out(x) + (1 - a)) / 2 because OUT models alone underestimate it). For population records z
(never trained on by the target), p(z) is computed the same way. The score of x is the fraction of z with

    LR(x, z) = [p(x|theta) / p(x)] / [p(z|theta) / p(z)] >= gamma        (gamma = 1 by default).

Why a temperature: on a confident target most records, members and non-members alike, have p(x|theta) above
0.95 at T = 1 (70% of the audited records of purchase-fcn trained 40 epochs on 1,000 long-tailed
synthetic-purchase records: 600 features, 20 classes, 8 Zipf subgroups, 5% label noise). Their log-probabilities
all lie within a few hundredths of 0, so the ratio's ranking among them is set by the denominator (how hard the
record is for the reference models, averaged over a few of them), not by the target, and RMIA fell below the
loss threshold in AUC (4 reference models: online 0.825, offline 0.789, loss 0.857). At T = 4 no record is that
saturated and the target's evidence counts again (online 0.870, offline 0.862). The price, offline, can be some
TPR at 1% FPR (7.5% -> 5.4% there, the loss threshold 3.7%): the game below chooses T for AUC. Reference
implementations scale logits the same way before the softmax.

T (and offline also a) is chosen as the paper chooses a: by a game played with the reference models only. Each
reference model in turn is attacked with the others, on records whose membership in it is known: offline, the
population records (its training records among them are its members); online, the audited records (each is IN
for half the reference models; p(x) there weighs the other models' IN and OUT means equally, see
:func:`_game_auc`). The (T, a) with the best mean AUC wins (ties: the smaller T, the smaller a). The
target's membership is never looked at. Without that knowledge (``reference_population_in`` missing, or a single
reference model), T = 1 and a = ``default_a`` (0.3, ML Privacy Meter's default).

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
#: the softmax temperatures the reference-model game chooses from (1: the plain softmax)
TEMPERATURES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
DEFAULT_TEMPERATURE = 1.0


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
    if pop_in is None or p_pop_ref.shape[0] < 2:
        return DEFAULT_A, {}
    table = {float(a): _game_auc(p_pop_ref, pop_in, True, float(a)) for a in grid}
    table = {a: v for a, v in table.items() if v is not None}
    if not table:
        return DEFAULT_A, {}
    best = max(table, key=lambda a: (table[a], -a))
    return best, table


def _balanced_marginal(p_ref: np.ndarray, in_mask: np.ndarray) -> np.ndarray:
    """p(x) as the mean of the IN models' mean and the OUT models' mean (the plain mean where a record has no
    model of one kind): the online marginal of a game in which IN/OUT counts differ from record to record."""
    p_in, p_out = _mean_over(p_ref, in_mask), _mean_over(p_ref, ~in_mask)
    both = np.isfinite(p_in) & np.isfinite(p_out)
    return np.where(both, (p_in + p_out) / 2.0, p_ref.mean(axis=0))


def _game_auc(p_ref: np.ndarray, in_mask: np.ndarray, offline: bool, a: float) -> float | None:
    """Mean AUC of the ratio p_j / p(x) (p(x) from the other models) at telling reference model j's members from
    its non-members, over every j; None when no model has both.

    Online, every audited record is IN for half the reference models, so among the others a member of model j
    has one IN model fewer than a non-member has: their plain mean would be lower for j's members for that
    reason alone, and the game would reward the temperature at which IN/OUT counts show most, not the one at
    which the target's evidence does (on a 50-class long-tailed target the game chose T = 8, AUC 0.882 and
    8.0% TPR at 1% FPR below the loss threshold's 0.884 and 9.6%, where T = 1 gives 0.891 and 14.6%). The
    online game therefore weighs IN and OUT models equally (:func:`_balanced_marginal`), as the target's attack
    does with its equal numbers of both."""
    n_models, aucs = p_ref.shape[0], []
    for j in range(n_models):
        others = np.delete(np.arange(n_models), j)
        marginal = _p_marginal(p_ref[others], in_mask[others], offline, a) if offline else \
            _balanced_marginal(p_ref[others], in_mask[others])
        ratio = p_ref[j] / marginal
        ok = np.isfinite(ratio)
        members = in_mask[j]
        if (ok & members).any() and (ok & ~members).any():
            aucs.append(auc(ratio[ok & members], ratio[ok & ~members]))
    return float(np.mean(aucs)) if aucs else None


def tune_rmia(ref_logits: np.ndarray, labels: np.ndarray, in_mask: np.ndarray | None, *, offline: bool,
              a: float | None = None, temperatures=TEMPERATURES, grid=A_GRID) -> tuple[float, float, dict]:
    """Choose the temperature (and offline, with ``a`` None, also a) by attacking each reference model with the
    others: ``ref_logits`` (R, n, C) of records whose membership in each model ``in_mask`` (R, n) gives.

    Returns (T, a, {(T, a): mean AUC}); (DEFAULT_TEMPERATURE, a or DEFAULT_A, {}) when it cannot be tuned."""
    fallback = (DEFAULT_TEMPERATURE, DEFAULT_A if a is None else float(a), {})
    if in_mask is None or ref_logits.shape[0] < 2:
        return fallback
    a_values = (grid if a is None else (float(a),)) if offline else (DEFAULT_A,)
    table = {}
    for t in temperatures:
        p_ref = true_class_prob(ref_logits / float(t), labels)
        for a_value in a_values:
            value = _game_auc(p_ref, in_mask, offline, float(a_value))
            if value is not None:
                table[(float(t), float(a_value))] = value
    if not table:
        return fallback
    best = max(table, key=lambda k: (round(table[k], 12), -k[0], -k[1]))
    return best[0], best[1], table


def _tuned(inputs: AttackInputs, offline: bool, a, temperature) -> tuple[float, float]:
    """(T, a) for these inputs: given values kept, the others chosen by :func:`tune_rmia`."""
    if temperature is not None and (not offline or a is not None):
        return float(temperature), DEFAULT_A if a is None else float(a)
    if offline:    # the population records: each reference model's members among them are known
        if temperature is not None:    # a alone, at the given temperature (as before temperatures were tuned)
            p = true_class_prob(inputs.reference_population_logits / float(temperature), inputs.population_labels)
            return float(temperature), tune_offline_a(p, inputs.reference_population_in)[0]
        t, a, table = tune_rmia(inputs.reference_population_logits, inputs.population_labels,
                                inputs.reference_population_in, offline=True, a=a)
    else:          # the audited records: each is IN for half the reference models
        t, a, table = tune_rmia(inputs.reference_logits, inputs.labels, inputs.in_mask(), offline=False)
    log.info("rmia-%s: T = %.1f, a = %.2f (reference-model game AUC %.4f)", "offline" if offline else "online",
             t, a, table.get((t, a), float("nan")))
    return t, a


def _run(inputs: AttackInputs, offline: bool, a, gamma, tie_break, temperature=None) -> np.ndarray:
    gamma = float(gamma)
    if not gamma > 0:
        raise AttackError(f"attack 'rmia': gamma must be positive, got {gamma}")
    if temperature is not None and not float(temperature) > 0:
        raise AttackError(f"attack 'rmia': temperature must be positive, got {temperature}")
    if offline and a is not None and not 0.0 <= float(a) <= 1.0:
        raise AttackError(f"attack 'rmia-offline': a must be in [0, 1], got {a}")
    t, a = _tuned(inputs, offline, a, temperature)
    p_x = true_class_prob(inputs.target_logits / t, inputs.labels)
    p_x_ref = true_class_prob(inputs.reference_logits / t, inputs.labels)
    p_z = true_class_prob(inputs.population_logits / t, inputs.population_labels)
    p_z_ref = true_class_prob(inputs.reference_population_logits / t, inputs.population_labels)
    return rmia_scores(p_x, p_x_ref, inputs.in_mask(), p_z, p_z_ref, inputs.population_in_mask(), offline=offline,
                       a=a, gamma=gamma, tie_break=tie_break)


@register_score_attack("rmia-offline", needs=("population", "reference_out", "reference_population"),
                       aliases=("rmia",), rank=50)
def rmia_offline(inputs: AttackInputs, a: float | None = None, gamma: float = 1.0,
                 tie_break: bool = True, temperature: float | None = None) -> np.ndarray:
    """RMIA offline (Zarifzadeh et al. 2024): OUT reference models, p(x) corrected by a; T and a tuned."""
    return _run(inputs, True, a, gamma, tie_break, temperature)


@register_score_attack("rmia-online", needs=("population", "reference_in", "reference_out", "reference_population"),
                       rank=30)
def rmia_online(inputs: AttackInputs, gamma: float = 1.0, tie_break: bool = True,
                temperature: float | None = None) -> np.ndarray:
    """RMIA online (Zarifzadeh et al. 2024): p(x) is the mean over IN and OUT reference models; T tuned."""
    return _run(inputs, False, None, gamma, tie_break, temperature)
