"""The auditor's attacks on per-record features, cross-fitted so that every score is out of sample.

NumPy and scikit-learn only. Cross-fitting: the audited records are split into folds; the records of fold f
are scored by an attack fitted on the adversary's known records (a balanced sample of members and
non-members) from the other folds. A record is therefore never scored by an attack that was fitted on it,
and every audited record, known or not, gets a score.

Which attacks exist, what each needs and which is the headline come from the registry
(:mod:`fedaudit.attacks.base`): :func:`audit_attacks` picks the configured attacks the per-round auditor can run,
:func:`view_attacks` those of one threat model, :func:`headline` the best-ranked one. The trained attacks
(``whitebox``: every feature of :mod:`fedaudit.auditor.features`; ``blackbox``: the output-only columns) are the
logistic regressions below; the score attacks run per model in the shards (:mod:`fedaudit.auditor.shard`:
those that need ``population`` cross-fitted by fold on the known non-members of the population sample, those
with reference models when ``[audit] reference_models >= 2``, :mod:`fedaudit.auditor.references`), and the
``null`` ones (FedMIA) in the server view, on the other clients' models (:mod:`fedaudit.auditor.null`).

Why not Nasr et al.'s attack network per round: measured on ``scenarios/overfit.toml`` (round 1, server view,
the same records and folds), :func:`fedaudit.attacks.whitebox.fit_attack` trained a 2.3-million-parameter network
for 130-200 s per fold on 2 busy cores and reached AUC 0.78; the logistic regression on compact features
below fits in milliseconds and reached 0.82. The network stays with single-model audits.

Fitted attacks return log-odds (no saturation at the top, where TPR at low FPR is decided); the auditor
turns aggregated log-odds into a probability only for ``risk``.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from fedaudit.attacks.fitted import OUTPUT_FEATURES

log = logging.getLogger(__name__)

#: the output-only features, first columns of every feature matrix (see fedaudit.auditor.features)
BLACKBOX = OUTPUT_FEATURES
#: why the attacks that need reference models are skipped without enough of them
NOT_PER_ROUND = ("needs at least 2 reference models ([audit] reference_models >= 2: each audited record is IN "
                 "for half of them and OUT for the others)")
SINGLE_MODEL_ONLY = "runs in single-model audits only (fedaudit audit-model, fedaudit.attacks.audit_model)"


def spec(name: str):
    """The registry's entry of attack ``name``."""
    from fedaudit.attacks.base import attack_spec

    return attack_spec(name)


def audit_attacks(configured, reference_models: int = 0) -> tuple[list, dict]:
    """(attacks the per-round auditor runs, {attack: why it is skipped}), from the registry.

    The attacks with reference models run when ``reference_models >= 2`` (see
    :mod:`fedaudit.auditor.references`); nothing runs: the loss threshold."""
    from fedaudit.auditor.references import MIN_MODELS

    run, skipped = [], {}
    for name in configured:
        s = spec(name)
        if not s.per_round:
            skipped[name] = SINGLE_MODEL_ONLY
        elif s.uses_reference_models and int(reference_models) < MIN_MODELS:
            skipped[name] = NOT_PER_ROUND
        else:
            run.append(name)
    return (run or ["loss"]), skipped


def view_attacks(attacks, threat_model: str) -> list:
    """The attacks of ``attacks`` that run in ``threat_model`` (the loss threshold when none does)."""
    out = [a for a in attacks if threat_model in spec(a).views]
    return out or ["loss"]


def trained_attacks(attacks) -> list:
    return [a for a in attacks if spec(a).trained]


def job_attacks(attacks) -> list:
    """The score attacks the shards compute per model (all but the trained and the ``null`` ones)."""
    return [a for a in attacks if not spec(a).trained and not spec(a).needs_null]


def null_attacks(attacks) -> list:
    return [a for a in attacks if spec(a).needs_null]


class Logistic:
    """L2-regularised logistic regression on standardised features, missing values imputed by the mean.

    The objective is scikit-learn's (``C * sum(log-loss) + 0.5 * |w|^2``, intercept unpenalised) and Newton's
    method solves it exactly (tests check it against ``sklearn.linear_model.LogisticRegression``); it is
    written out because the auditor fits about twenty of these per round on a few hundred rows, where
    scikit-learn's per-call validation costs 20-50 times the fit itself on a busy machine.
    """

    def __init__(self, c: float = 1.0, max_iter: int = 50, tol: float = 1e-8):
        self.c, self.max_iter, self.tol = float(c), int(max_iter), float(tol)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        z = np.where(np.isnan(x), self.mean_, x)
        return np.c_[(z - self.mean_) / self.scale_, np.ones(len(z))]

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Logistic":
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN columns: mean 0, never used
            mean = np.nanmean(x, axis=0)
        self.mean_ = np.where(np.isnan(mean), 0.0, mean)
        z = np.where(np.isnan(x), self.mean_, x)
        scale = z.std(axis=0)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0)
        a = self._prepare(x)
        d = a.shape[1]
        reg = np.eye(d) / self.c
        reg[-1, -1] = 0.0
        w = np.zeros(d)
        for _ in range(self.max_iter):
            p = sigmoid(a @ w)
            grad = a.T @ (p - y) + reg @ w
            hess = (a * (p * (1.0 - p))[:, None]).T @ a + reg + 1e-10 * np.eye(d)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.max(np.abs(step)) < self.tol:
                break
        self.coef_ = w
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return self._prepare(np.asarray(x, dtype=np.float64)) @ self.coef_


def clean_rows(x: np.ndarray) -> np.ndarray:
    """Float64 copy with infinities as NaN (imputed like missing values) and huge values clipped."""
    x = np.array(x, dtype=np.float64)
    x[~np.isfinite(x)] = np.nan
    return np.clip(x, -1e6, 1e6)


class FoldAttack:
    """One classifier per cross-fitting fold: record i's rows are scored by the classifier fitted on the known
    records outside ``fold[i]`` (None where that fold had no known member or no known non-member), all with
    the penalty ``c``."""

    def __init__(self, models: dict, fold: np.ndarray, f_dim: int, c: float | None = None):
        self.models, self.fold, self.f_dim, self.c = models, np.asarray(fold), int(f_dim), c

    def score(self, positions: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Log-odds of ``rows`` (m, ..., F), row group j belonging to record ``positions[j]``; NaN where a row is
        all NaN or its record's fold has no classifier."""
        positions = np.asarray(positions)
        rows = clean_rows(rows)
        out = np.full(rows.shape[:-1], np.nan)
        folds = self.fold[positions]
        for f, clf in self.models.items():
            target = folds == f
            if clf is None or not target.any():
                continue
            block = rows[target].reshape(-1, self.f_dim)
            ok = ~np.isnan(block).all(axis=1)
            scores = np.full(block.shape[0], np.nan)
            if ok.any():
                scores[ok] = clf.decision_function(block[ok])
            out[target] = scores.reshape(rows[target].shape[:-1])
        return out


#: the penalties (``C``) a per-round attack chooses among, by its fold models' out-of-fold deviance on the known
#: records (a ranking of features that carry a strong signal gains from a weak penalty, one of weak signals from a
#: strong penalty)
ROUND_C = (100.0, 10.0, 1.0, 0.1, 0.01)


def fit_folds(fit_rows: np.ndarray, member: np.ndarray, fold: np.ndarray, known: np.ndarray, *,
              c: float | tuple = 1.0, eligible: np.ndarray | None = None) -> FoldAttack:
    """Fit one :class:`Logistic` per fold on the known records outside it (rows that are all NaN, and records
    not ``eligible`` to be fitted on, are left out).

    ``c``: the penalty, or several: then the fold models of the one under which the known records' out-of-fold
    log-odds have the lowest mean deviance (each known record scored by the model its fold left it out of; the
    other records are never read, so the choice is made before any of them is scored).
    """
    fit_rows = clean_rows(fit_rows)
    f_dim = fit_rows.shape[1]
    available = ~np.isnan(fit_rows).all(axis=1)
    if eligible is not None:
        available &= np.asarray(eligible, dtype=bool)
    trains = {}
    for f in np.unique(fold):
        train = known & (fold != f) & available
        ys = member[train]
        if ys.all() or not ys.any():
            log.warning("fold %d: no known %s outside the fold; its records get no score", f,
                        "non-member" if ys.all() else "member")
            trains[int(f)] = None
            continue
        trains[int(f)] = train

    def fitted(penalty: float) -> FoldAttack:
        return FoldAttack({f: None if train is None else Logistic(penalty).fit(fit_rows[train], member[train])
                           for f, train in trains.items()}, fold, f_dim, penalty)

    if np.ndim(c) == 0:
        return fitted(float(c))
    scored = np.flatnonzero(known & available)

    def out_of_fold_deviance(attack: FoldAttack) -> float:
        z = attack.score(scored, fit_rows[scored])
        ok = np.isfinite(z)
        if not ok.any():
            return np.inf
        z, y = z[ok], member[scored][ok].astype(np.float64)
        return float(np.mean(np.logaddexp(0.0, z) - y * z))     # binary cross-entropy of the log-odds

    return min((fitted(float(p)) for p in c), key=out_of_fold_deviance)     # ties: the first


def cross_fit(fit_rows: np.ndarray, member: np.ndarray, fold: np.ndarray, known: np.ndarray,
              score_rows: np.ndarray | None = None, *, c: float | tuple = 1.0) -> np.ndarray:
    """Cross-fitted log-odds of membership.

    fit_rows: (n, F) the features each record is fitted on (NaN rows: not available, never fitted on).
    score_rows: (n, ..., F) the rows to score per record (default ``fit_rows``); record i's rows are scored
        by the attack fitted on known records outside ``fold[i]``.
    Returns scores shaped like ``score_rows[..., 0]``, NaN where a row is all NaN or a fold's attack had no
    known member or no known non-member to fit on.
    """
    attack = fit_folds(fit_rows, member, fold, known, c=c)
    rows = fit_rows if score_rows is None else score_rows
    return attack.score(np.arange(len(fold)), rows)


def headline(attacks) -> str:
    """The headline attack among those that ran: the best-ranked in the registry."""
    from fedaudit.attacks.base import headline as best_ranked

    return best_ranked(attacks)


def ranked_scores(scores: dict, first: str) -> dict:
    """``scores`` ({attack: per-record scores}) with ``first`` first and the others in headline-rank order (the
    order :func:`fedaudit.auditor.results.low_fpr_choice` falls back and breaks ties in)."""
    return {a: scores[a] for a in sorted(scores, key=lambda a: (a != first, spec(a).rank, a))}


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))          # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
