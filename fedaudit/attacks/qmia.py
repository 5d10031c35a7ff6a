"""Quantile-regression membership inference (Bertran et al., NeurIPS 2023): no reference models.

One regression model, fitted on population records (records the target did not train on), predicts from a
record's own features and label the (1 - alpha)-quantile of the target's score on non-members like it:
q(x, y). A record whose score exceeds its predicted quantile is flagged at false-positive rate about alpha, and
the attack's score is ``s(x, y) - q(x, y)`` (higher = more likely a member), so each record is compared with
what the target does on similar records it never saw: per-record difficulty without training a single shadow
model. The target's score is the paper's hinge, ``z_y - max_{j != y} z_j`` on the logits (``statistic="phi"``:
LiRA's logit-scaled confidence instead).

Regressors: ``ridge`` (default; closed form, milliseconds: the per-round auditor fits one per client model and
fold): a ridge regression of the score on the standardised features, its penalty chosen by leave-one-out
error in closed form (with a few hundred population records the inputs can often only refine the per-class
level and a weak penalty fits noise: measured on digits with 150 population records, AUC 0.62 with penalty 1,
0.73-0.74 with 100-300, loss threshold 0.74), plus the (1 - alpha)-quantile of its residuals on the fitting
records, i.e. a linear location model of the quantile; ``linear``: scikit-learn's
``QuantileRegressor`` (linear quantile regression, the pinball loss, a small L1 penalty); ``gradient-boosting``:
``HistGradientBoostingRegressor`` with the quantile loss, small and regularised (population samples are a few
hundred records), on one thread. Features: the record's inputs (flattened) and its one-hot label.

In the auditor the population records it is fitted on are the known non-members of the population sample
outside the scored record's fold (cross-fitted like attack P), so no record is scored by a fit that saw it.
"""

from __future__ import annotations

import numpy as np

from fedaudit.attacks.base import AttackInputs, register_score_attack
from fedaudit.attacks.scores import check_logits, logit_confidence
from fedaudit.errors import AttackError

REGRESSORS = ("ridge", "linear", "gradient-boosting")
STATISTICS = ("hinge", "phi")
MIN_RECORDS = 10


def hinge(logits, labels) -> np.ndarray:
    """The paper's score: the true-class logit minus the largest other logit."""
    z, y = check_logits(logits, labels)
    zy = np.take_along_axis(z, y[:, None], axis=1)[:, 0]
    other = z.copy()
    np.put_along_axis(other, y[:, None], -np.inf, axis=1)
    return zy - other.max(axis=1)


def statistic_of(name: str, logits, labels) -> np.ndarray:
    if name == "hinge":
        return hinge(logits, labels)
    if name == "phi":
        return logit_confidence(logits, labels)
    raise AttackError(f"attack 'qmia': statistic must be one of {', '.join(STATISTICS)}, got {name!r}")


def design(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The regression's inputs: the record's features and its one-hot label."""
    onehot = np.zeros((labels.size, num_classes))
    onehot[np.arange(labels.size), labels] = 1.0
    return np.c_[np.asarray(features, dtype=np.float64).reshape(labels.size, -1), onehot]


PENALTIES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)   # ridge penalties tried, times the number of records


def ridge_loo(z: np.ndarray, s: np.ndarray, penalty: float | None = None):
    """Ridge regression of ``s`` on ``z`` (intercept unpenalised); the penalty, unless given, is the one of
    :data:`PENALTIES` (times the number of records) with the smallest leave-one-out squared error, computed in
    closed form from one SVD. Returns (coefficients, intercept, penalty)."""
    zm, sm = z.mean(axis=0), s.mean()
    u, sv, vt = np.linalg.svd(z - zm, full_matrices=False)
    us = u.T @ (s - sm)
    n = s.size
    best = None
    for lam in ([penalty] if penalty is not None else [p * n for p in PENALTIES]):
        shrink = sv / (sv * sv + lam)
        fit = u @ (sv * shrink * us)
        hat = (u * u) @ (sv * shrink) + 1.0 / n
        loo = float(np.mean(((s - sm - fit) / np.maximum(1.0 - hat, 1e-6)) ** 2))
        if best is None or loo < best[0]:
            best = (loo, lam, vt.T @ (shrink * us))
    _, lam, coef = best
    return coef, float(sm - zm @ coef), float(lam)


class QuantileModel:
    """A fitted (1 - alpha)-quantile regression of the target's score on a record's features."""

    def __init__(self, alpha: float = 0.1, regressor: str = "ridge", seed: int = 0, ridge: float | None = None):
        if not 0 < alpha < 1:
            raise AttackError(f"attack 'qmia': alpha must be in (0, 1), got {alpha}")
        if regressor not in REGRESSORS:
            raise AttackError(f"attack 'qmia': regressor must be one of {', '.join(REGRESSORS)}, got {regressor!r}")
        self.alpha, self.regressor, self.seed, self.ridge = float(alpha), regressor, int(seed), ridge

    def fit(self, x: np.ndarray, s: np.ndarray) -> "QuantileModel":
        x, s = np.asarray(x, dtype=np.float64), np.asarray(s, dtype=np.float64)
        if s.size < MIN_RECORDS:
            raise AttackError(f"attack 'qmia' needs at least {MIN_RECORDS} population records to fit its "
                              f"quantile regression; got {s.size}")
        q = 1.0 - self.alpha
        self.mean_ = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0)
        z = (x - self.mean_) / self.scale_
        if self.regressor == "ridge":
            self.coef_, self.intercept_, self.penalty_ = ridge_loo(z, s, self.ridge)
            self.offset_ = float(np.quantile(s - z @ self.coef_ - self.intercept_, q))
            return self
        if self.regressor == "gradient-boosting":
            from sklearn.ensemble import HistGradientBoostingRegressor
            from threadpoolctl import threadpool_limits

            self.model = HistGradientBoostingRegressor(
                loss="quantile", quantile=q, max_iter=60, learning_rate=0.1, max_leaf_nodes=8,
                min_samples_leaf=max(5, s.size // 40), l2_regularization=1.0, early_stopping=False,
                random_state=self.seed)
            with threadpool_limits(1):          # OpenMP threads on a few hundred rows cost more than they save
                self.model.fit(z, s)
        else:
            from sklearn.linear_model import QuantileRegressor

            self.model = QuantileRegressor(quantile=q, alpha=1.0 / s.size, solver="highs").fit(z, s)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_
        if self.regressor == "ridge":
            return z @ self.coef_ + self.intercept_ + self.offset_
        if self.regressor == "gradient-boosting":
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):
                return self.model.predict(z)
        return self.model.predict(z)


@register_score_attack("qmia", needs=("population", "features"), rank=95)
def qmia_attack(inputs: AttackInputs, alpha: float = 0.1, statistic: str = "hinge",
                regressor: str = "ridge", seed: int = 0, ridge: float | None = None) -> np.ndarray:
    """Quantile-regression MIA (Bertran et al. 2023): score minus its predicted non-member quantile."""
    c = inputs.target_logits.shape[1]
    s_pop = statistic_of(statistic, inputs.population_logits, inputs.population_labels)
    model = QuantileModel(alpha, regressor, seed, ridge).fit(
        design(inputs.population_features, inputs.population_labels, c), s_pop)
    s = statistic_of(statistic, inputs.target_logits, inputs.labels)
    return s - model.predict(design(inputs.features, inputs.labels, c))
