"""Low-FPR known answers for the stacked meminf attack (forest and boosting), on generated signals (no Keras model
trained).

A planted leak: a tenth of the members are memorised (true-class logit far above the rest, a loss near zero) and
every member's log gradient norm is less spread. The "network" here reads only how far the gradient norm is from
the typical one: a weak attack with some AUC and no tail. The stack must find the memorised members at 1% FPR,
where the weak attack names few; with no signal at all, it must stay at chance.
"""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from fedaudit.attacks.nasr.features import Component, WhiteboxFeatures, _log_loss  # noqa: E402
from fedaudit.attacks.nasr.stacking import stack  # noqa: E402
from fedaudit.metrics import summarize  # noqa: E402

CLASSES = 5


def _features(member: np.ndarray, rng, leak: bool) -> WhiteboxFeatures:
    n = len(member)
    labels = rng.integers(0, CLASSES, n)
    z = rng.normal(0, 1, (n, CLASSES))
    z[np.arange(n), labels] += 2.0
    grad_norm = np.exp(rng.normal(0, 1, n))
    if leak:
        memorised = member & (rng.random(n) < 0.1)
        z[memorised, labels[memorised]] += 12.0
        grad_norm = grad_norm ** np.where(member, 0.5, 1.0)
    loss, log_loss = _log_loss(z, labels)
    comps = [Component("label", "label", (CLASSES,)), Component("loss", "loss", (2,))]
    arrays = {"label": np.eye(CLASSES, dtype=np.float32)[labels],
              "loss": np.stack([loss, log_loss], 1).astype(np.float32)}
    return WhiteboxFeatures(comps, arrays, labels, loss, z, grad_norm, CLASSES)


class _WeakNetwork:
    """Stands in for a trained attack network that learned only the gradient norm's spread (no tail)."""

    def __init__(self, n: int, rng):
        self.val_index = np.sort(rng.permutation(n)[: n // 5])
        self.train_index = np.setdiff1d(np.arange(n), self.val_index)

    def log_odds(self, features: WhiteboxFeatures) -> np.ndarray:
        return -np.abs(np.log(features.gradient_norm))

    def predict(self, features: WhiteboxFeatures) -> np.ndarray:
        return 1 / (1 + np.exp(-self.log_odds(features)))


def _attack(leak: bool, seed: int, kind: str):
    rng = np.random.default_rng(seed)
    known = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    held = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    fk, fh = _features(known, rng, leak), _features(held, rng, leak)
    network = _WeakNetwork(len(known), rng)
    stacked = stack(network, fk, known.astype(int), seed=seed, kind=kind)
    s, weak = stacked.log_odds(fh), network.predict(fh)
    return summarize(s[held], s[~held]), summarize(weak[held], weak[~held]), stacked


@pytest.mark.parametrize("kind", ["forest", "boosting"])
def test_planted_leak_is_found_at_low_fpr_where_a_weak_attack_is_not(kind):
    chosen, weak, stacked = _attack(leak=True, seed=1, kind=kind)
    assert weak.auc > 0.6                                  # the weak attack ranks members above chance ...
    assert weak.tpr_at_1pct < 0.05                         # ... but names few of them at 1% FPR
    assert chosen.tpr_at_1pct > 0.07, (chosen.tpr_at_1pct, stacked.validation)   # ~0.1 memorised: most found
    assert chosen.tpr_at_1pct > 2 * weak.tpr_at_1pct
    assert chosen.auc >= weak.auc - 0.02


@pytest.mark.parametrize("kind", ["forest", "boosting"])
def test_no_signal_stays_at_chance(kind):
    chosen, weak, _ = _attack(leak=False, seed=2, kind=kind)
    assert abs(chosen.auc - 0.5) < 0.04 and abs(weak.auc - 0.5) < 0.04
    assert chosen.tpr_at_1pct < 0.035                       # chance: 1% (2,000 scored records)
