"""Models on compact statistics of the same signals, stacked with the attack network.

The attack network reads every signal in full; a few hundred known records are little to learn that from,
and what separates members at low false-positive rates is often one number (a tiny loss, a tiny gradient
in one layer). :func:`compact_features` condenses the same signals into a few dozen numbers per record
(loss and log-loss, true-class logit and margin, entropy, the top logits, each exploited dense layer's
gradient factors as log-norms, each exploited layer output's norm and spread, and the label as a category),
and :class:`StackedAttack` adds a second model on them to the network (``stack=`` of the meminf attack; the
default is the network alone):

- ``"forest"``: scikit-learn's ``RandomForestClassifier`` on :func:`forest_features` (the
  target's softmax vector and the one-hot label, as ART's black-box attack reads them, beside the compact
  statistics); the score is the mean of the two models' membership probabilities (its log-odds computed in logs,
  so that records the forest calls members unanimously stay ordered by the network). On tutorial-shaped targets it
  raised the AUC and did not raise the TPR at low FPR, up on some seeds and down on others. Eight targets per
  seed, pooled, network alone -> with the forest: seed 3 (the development seed) AUC 0.891 -> 0.897, TPR at 1% FPR
  7.7% -> 10.4%; never used before, ``simulations/attack_network_forest.py --seed 57721`` and ``69069``: 0.893 ->
  0.900, 10.5% -> 7.5%; 0.898 -> 0.900, 9.1% -> 10.0%; ``fedaudit bench attacks --peer art --family tutorial
  --seed 1729``, ``65537`` and ``2718281``: 0.899 -> 0.904, 10.3% -> 6.5%; 0.912 -> 0.913, 8.9% -> 8.9%; 0.896 ->
  0.899, 7.2% -> 8.7% (ART's random forest: AUC 0.870 to 0.890, TPR 4.2% to 8.5%). Per target, over the first
  three seeds' 24 targets, AUC rose by 0.005 [0.003, 0.007] (on 20 of 24) and TPR at 1% FPR by 0.9 points
  [-0.9, 2.8]; over the five fresh seeds, pooled TPR at 1% FPR 8.3% on average against the network's 9.2%, at
  0.1% 1.0% against 1.1%. On the long-tailed targets of ``fedaudit bench attacks --peer art --family longtail
  --seed 4711`` and ``8191`` it named fewer: AUC 0.870 -> 0.872 and 0.870 -> 0.874, TPR at 1% FPR 12.0% -> 10.2%
  and 13.4% -> 12.5%, at 0.1% 1.7% -> 0.5% and 4.3% -> 3.4%; on the varied shapes of ``--family purchase --seed
  8191`` more: 0.866 -> 0.876, 14.5% -> 16.9%, 1.4% -> 4.1%. So it is an option, not the default: which names more
  at the rates a DPIA reads depends on the target. The forest alone and other mixes (of log-odds; leaves of 1 to
  10 records; 0.7 to the network) did no better on the tutorial's shape;
- ``"boosting"``: scikit-learn's ``HistGradientBoostingClassifier`` on the compact statistics; the score is the mean
  of the two models' log-odds (:data:`WEIGHT` for the network). Choosing the weight on the network's validation
  split (a fifth of the known records) was measured on the purchase-like target of ``fedaudit bench attacks --peer
  art`` and lost to the even mix (4 targets pooled, TPR at 1% FPR 3.3% against 5.2%): a hundred-odd validation
  records are too few to choose from.

The validation split reports each part's and the mix's balanced cross-entropy (:attr:`StackedAttack.validation`),
with the second model fitted on the network's training split only, so that all three are out of sample (but for
the network's temperature, one number fitted on that split:
:func:`fedaudit.attacks.nasr.training.calibrate_temperature`). The second model that scores is fitted on all known
records. Records the attack scores later were seen by neither model, so every score is out of sample.

Measured beside the boosted even mix at low FPR (TPR at 1% FPR, 6 tutorial-shaped targets of ``--family tutorial``
seeds 0 and 1, pooled; whitebox / blackbox): the network alone 8.1% / 8.5% against the mix's 7.7% / 8.3%; the boosted
model alone, its log-odds calibrated on 3-fold out-of-fold predictions over all known records, 10.7% / 7.3%; the
mix with the calibrated boosted model 6.9% / 8.2%; a random forest on the same statistics added to the mix (on 2
of the targets) 9.3% / 8.7% against 9.8% / 8.0%. Choosing among network, boosted model and mix on the validation
split by the mean TPR up to 10% FPR chose the boosted model on a target where it named 1.3% at 1% FPR and the
network 14.3%. The best of them changes from target to target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from fedaudit.attacks.nasr.features import WhiteboxFeatures
from fedaudit.attacks.scores import softmax
from fedaudit.errors import AttackError

#: WhiteBoxAttack's ``stack`` choices (None: the network alone)
STACKS = ("forest", "boosting", None)

#: the network's share of the stacked score (the other model has the rest): of the log-odds with "boosting", of
#: the probabilities with "forest"
WEIGHT = 0.5

#: the boosted model's settings (small data: shallow trees, shrinkage, L2)
BOOSTING = dict(learning_rate=0.05, max_iter=200, max_leaf_nodes=15, l2_regularization=1.0, early_stopping=False)

#: the forest's settings (chosen before measuring, not tuned: 300 trees, leaves of at least 2 records)
FOREST = dict(n_estimators=300, min_samples_leaf=2)


def _log(v: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(v, np.float64), 1e-30))


def compact_features(f: WhiteboxFeatures) -> np.ndarray:
    """(n, k) float64: a few statistics per signal of ``f``; the last column is the label (a category)."""
    z = np.asarray(f.logits, np.float64)
    n, rows, y = len(z), np.arange(len(z)), f.labels
    zs = z - z.max(axis=1, keepdims=True)
    p = np.exp(zs)
    p /= p.sum(axis=1, keepdims=True)
    zy = z[rows, y]
    other = z.copy()
    other[rows, y] = -np.inf
    top = np.sort(z, axis=1)
    cols = [f.loss, _log(f.loss) if "loss" not in f.arrays else f.arrays["loss"][:, 1], zy, other.max(axis=1),
            zy - other.max(axis=1), -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1), top[:, -1],
            top[:, -2] if z.shape[1] > 1 else top[:, -1], np.linalg.norm(z, axis=1), _log(f.gradient_norm)]
    for comp in f.components:
        if comp.kind == "grad_factors":
            a = np.linalg.norm(f.arrays[f"{comp.name}/a"].astype(np.float64), axis=1)
            d = np.linalg.norm(f.arrays[f"{comp.name}/d"].astype(np.float64), axis=1)
            cols += [_log(a), _log(d), _log(a * d)]
        elif comp.kind in ("grad_full", "grad_conv"):
            g = f.arrays[comp.name].reshape(n, -1).astype(np.float64)
            cols.append(_log(np.linalg.norm(g, axis=1)))
        elif comp.kind in ("output_dense", "output_conv"):
            v = f.arrays[comp.name].reshape(n, -1).astype(np.float64)
            cols += [np.linalg.norm(v, axis=1), v.std(axis=1)]
    x = np.column_stack(cols + [y.astype(np.float64)])
    return np.nan_to_num(x, nan=0.0, posinf=1e30, neginf=-1e30)


def forest_features(f: WhiteboxFeatures) -> np.ndarray:
    """(n, C + C + k - 1) float64: the target's softmax vector, the one-hot label and :func:`compact_features`
    without its label column."""
    return np.column_stack([softmax(f.logits), np.eye(f.logits.shape[1])[f.labels], compact_features(f)[:, :-1]])


def _forest(seed: int, n_features: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(random_state=int(seed), n_jobs=1, **FOREST)


def _boosted(seed: int, n_features: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    categorical = np.zeros(n_features, bool)
    categorical[-1] = True          # the label
    return HistGradientBoostingClassifier(random_state=int(seed), categorical_features=categorical, **BOOSTING)


#: per stacking: (the second model's features, the model, its key in StackedAttack.validation)
SECOND = {"forest": (forest_features, _forest, "forest"), "boosting": (compact_features, _boosted, "boosted")}


def _one_thread():
    """scikit-learn's OpenMP threads, one: on a few records, threads only wait for each other (on a shared
    2-core machine a 200-tree fit took 23 s with the default threads, 0.6 s with one)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _fit(model, x: np.ndarray, y: np.ndarray):
    with _one_thread():
        return model.fit(x, y)


def _probability(model, x: np.ndarray) -> np.ndarray:
    with _one_thread():
        return model.predict_proba(x)[:, 1].astype(np.float64)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _mean_probability_log_odds(weight: float, log_odds: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The log-odds of ``weight * sigmoid(log_odds) + (1 - weight) * p``, computed in logs: no clipping, so records
    that the forest calls members unanimously stay ordered by the network's log-odds, however large."""
    from scipy.special import log_expit

    with np.errstate(divide="ignore"):
        lw, lv, lp, lq = np.log(weight), np.log1p(-weight), np.log(p), np.log1p(-p)
    return np.logaddexp(lw + log_expit(log_odds), lv + lp) - np.logaddexp(lw + log_expit(-log_odds), lv + lq)


def _mix(kind: str, weight: float, network_log_odds: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The stacked log-odds, from the network's log-odds and the other model's membership probability ``p``:
    ``weight`` of the network's log-odds and the rest of the other model's ("boosting"), or the log-odds of
    ``weight`` of the network's probability and the rest of ``p`` ("forest")."""
    if kind == "forest":
        return _mean_probability_log_odds(weight, network_log_odds, p)
    return weight * network_log_odds + (1 - weight) * _logit(p)


def _balanced_bce(log_odds: np.ndarray, member: np.ndarray) -> float:
    w = np.where(member == 1, 0.5 / member.mean(), 0.5 / (1 - member.mean()))
    return float(np.mean(w * (np.logaddexp(0, log_odds) - member * log_odds)))


@dataclass
class StackedAttack:
    """The network mixed with a second model (:func:`_mix`): the boosted model's log-odds with ``kind`` "boosting",
    the forest's probability with "forest"."""

    network: object              # a FittedAttack
    second: object               # the second model (forest or boosted trees), refitted on every known record
    weight: float
    validation: dict             # balanced cross-entropy on the validation split: network, second model, stacked
    kind: str = "boosting"

    def log_odds(self, features: WhiteboxFeatures) -> np.ndarray:
        net = self.network.log_odds(features)
        if self.weight >= 1:
            return net
        return _mix(self.kind, self.weight, net, _probability(self.second, SECOND[self.kind][0](features)))

    def predict(self, features: WhiteboxFeatures) -> np.ndarray:
        """Membership probability of each record, shape (n,)."""
        return expit(self.log_odds(features))


def stack(fitted, features: WhiteboxFeatures, membership, seed: int = 0, kind: str = "boosting") -> StackedAttack:
    """Stack ``fitted`` (a :class:`FittedAttack` trained on ``features`` of the known records with
    ``membership``) with a second model (``kind``: "forest" or "boosting") fitted on every known record; the
    validation split's cross-entropy of the network, of the second model fitted on the network's training split
    and of their mix is reported."""
    if kind not in SECOND:
        raise AttackError(f"stack: unknown stacking {kind!r}; allowed: {', '.join(map(repr, SECOND))}")
    featurize, build, key = SECOND[kind]
    membership = np.asarray(membership).astype(np.int64).ravel()
    x = featurize(features)
    tr, val = fitted.train_index, fitted.val_index
    validation = {}
    if len(val) and len(np.unique(membership[val])) == 2 and len(np.unique(membership[tr])) == 2:
        p = _probability(_fit(build(seed, x.shape[1]), x[tr], membership[tr]), x[val])
        net = fitted.log_odds(features.subset(val))
        validation = {"network": _balanced_bce(net, membership[val]),
                      key: _balanced_bce(_logit(p), membership[val]),
                      "stacked": _balanced_bce(_mix(kind, WEIGHT, net, p), membership[val])}
    final = _fit(build(seed, x.shape[1]), x, membership)
    return StackedAttack(fitted, final, WEIGHT, validation, kind)
