"""The single-model audit on arrays: :func:`audit` runs every attack of the settings on one Keras model."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedaudit.errors import DataError, ModelError
from fedaudit.model_audit.settings import ModelAuditSettings

log = logging.getLogger(__name__)


@dataclass
class ModelAudit:
    """What :func:`audit` found. Records are the members, then the non-members, in the order given."""

    settings: ModelAuditSettings
    attacks: dict            # attack -> fedaudit.metrics.Summary
    scores: dict             # attack -> (n,) float64 scores, higher = more likely a member (NaN: not scored)
    headline: str            # the best-ranked attack that ran
    risk: np.ndarray         # (n,) the headline attack's membership probability
    member: np.ndarray       # (n,) bool
    labels: np.ndarray       # (n,) int64
    logits: np.ndarray       # (n, C) float64, the audited model's logits
    known: np.ndarray        # (n,) bool, the records the adversary knows (its trained attacks fit on them)

    @property
    def member_probs(self) -> np.ndarray:
        return self.risk[self.member]

    @property
    def nonmember_probs(self) -> np.ndarray:
        return self.risk[~self.member]


def _pair(records, name: str):
    """(x float32, y int64) of ``records``, an (x, y) pair or None (no records)."""
    if records is None:
        return None
    try:
        x, y = records
    except (TypeError, ValueError):
        raise DataError(f"{name}: expected a pair (x, y) of records and their labels, got "
                        f"{type(records).__name__}") from None
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: {x.shape[0]} records but {y.shape[0]} labels")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: labels must be integers (class indices), got {y.dtype}")
    return x, y.astype(np.int64)


class _Target:
    """The audited model as the attacks read it: its logits, and its architecture for reference models and the
    auditor's features (a registered model, or the model itself saved to ``folder`` as a ``keras-file``)."""

    def __init__(self, model, settings: ModelAuditSettings, folder: Path):
        from fedaudit.attacks.reference_models import logits_function
        from fedaudit.models.keras_file import as_logits

        self.raw = model
        self.probabilities = settings.outputs == "probabilities"
        self.model = as_logits(model) if settings.outputs == "auto" else model
        self._run = logits_function(self.model)
        self.model_name, self.model_options = settings.model_name, dict(settings.model_options or {})
        self._folder = folder

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = self._run(x)
        return np.log(np.clip(z, 1e-30, None)) if self.probabilities else z

    def architecture(self) -> tuple[str, dict]:
        """(model_name, model_options) of the audited architecture, the model saved on first use if unnamed."""
        if not self.model_name:
            path = self._folder / "audited.keras"
            self.raw.save(path)
            self.model_name, self.model_options = "keras-file", {"path": str(path)}
        return self.model_name, self.model_options


def _fitted_scores(settings, target: _Target, x, y, member, num_classes, records) -> dict:
    """The trained attacks (whitebox, blackbox, ...): cross-fitted logistic regression on the auditor's
    features of the model, each on the columns the registry says it reads."""
    from fedaudit.attacks.base import attack_spec
    from fedaudit.auditor.attack import cross_fit
    from fedaudit.auditor.features import ModelProbe

    wanted = [a for a in settings.attacks if attack_spec(a).trained]
    if not wanted:
        return {}
    name, options = target.architecture()
    probe = ModelProbe(name, options, x.shape[1:], num_classes, seed=settings.seed)
    features = probe.view(target.model.get_weights(), None, None, x, y).features
    usable = ~np.isnan(features).all(axis=0)          # update features (loss drop, cosines) need a previous model
    out = {}
    for a in wanted:
        cols = np.intersect1d(np.asarray(attack_spec(a).columns(list(probe.feature_names))), np.flatnonzero(usable))
        out[a] = cross_fit(features[:, cols], member, records.fold, records.known)
    return out


def _score_attacks(settings, target: _Target, logits, x, y, member, num_classes, population, records) -> dict:
    """The score attacks, each given what the registry says it needs: the logits alone, the population
    (the population records, or without any the known non-members, cross-fitted), or reference models."""
    from fedaudit.attacks.scoring import prepare_audit, score_all
    from fedaudit.attacks.base import AttackInputs, attack_spec, run_score_attack
    from fedaudit.auditor.shard import population_rows

    options = settings.attack_options or {}
    plain = [a for a in settings.attacks if not attack_spec(a).trained and a not in settings.reference_attacks]
    calibrated = [a for a in plain if "population" in attack_spec(a).needs]
    flat = x.reshape(len(x), -1)
    out = {}
    for a in plain:
        if a not in calibrated:
            feats = flat if "features" in attack_spec(a).needs else None
            out[a] = run_score_attack(a, AttackInputs(logits, y, features=feats), **options.get(a, {}))
    pop_logits = None
    if population is not None and (calibrated or settings.reference_attacks):
        pop_logits = target.logits(population[0])
    for a in calibrated:
        uses_features = "features" in attack_spec(a).needs
        if pop_logits is not None:
            xp = population[0]
            extra = {"features": flat, "population_features": xp.reshape(len(xp), -1)} if uses_features else {}
            out[a] = run_score_attack(a, AttackInputs(
                target_logits=logits, labels=y, population_logits=pop_logits, population_labels=population[1],
                **extra), **options.get(a, {}))
        else:   # calibrated on the adversary's known non-members, cross-fitted
            out[a] = population_rows(logits, y, records.fold, records.known & ~member, name=a,
                                     features=flat if uses_features else None)
    if settings.reference_attacks:
        if population is None:
            raise DataError(f"--population: attacks {', '.join(settings.reference_attacks)} train reference models "
                            "on population records (records the model never saw); give a --population file")
        name, model_options = target.architecture()
        data = prepare_audit(target.raw if target.probabilities else target.model, x[member], y[member],
                             x[~member], y[~member], x_population=population[0], y_population=population[1],
                             attacks=settings.reference_attacks, reference_models=settings.reference_models,
                             model_name=name, model_options=model_options, num_classes=num_classes,
                             from_probabilities=target.probabilities, **settings.reference_training())
        out.update(score_all(data, settings.reference_attacks, options))
    return out


def _membership_probability(name: str, scores: np.ndarray, member, records) -> np.ndarray:
    """The headline attack's membership probability: the fitted attacks' log-odds through a sigmoid; a score
    attack's scores calibrated by a cross-fitted logistic regression on the known records (monotone per fold)."""
    from fedaudit.attacks.base import attack_spec
    from fedaudit.auditor.attack import cross_fit, sigmoid

    trained = attack_spec(name).trained
    log_odds = scores if trained else cross_fit(scores[:, None], member, records.fold, records.known)
    return sigmoid(log_odds)


def _summaries(settings, scores: dict, member, labels, logits) -> dict:
    from fedaudit.metrics import summarize

    out = {}
    for a, s in scores.items():
        ok = np.isfinite(s)
        m, n = s[ok & member], s[ok & ~member]
        summary = summarize(m, n, delta=settings.delta, alpha=settings.alpha)
        if settings.slices:
            from fedaudit.attacks.scores import correct, loss
            from fedaudit.slices import slice_metrics

            losses, right = loss(logits, labels), correct(logits, labels)
            im, inn = ok & member, ok & ~member
            summary = replace(summary, slices=slice_metrics(
                m, n, labels[im], labels[inn], losses[im], losses[inn], right[im], right[inn],
                delta=settings.delta, alpha=settings.alpha))
        out[a] = summary
    return out


def audit(model, members, nonmembers, population=None, settings: ModelAuditSettings | None = None) -> ModelAudit:
    """Audit a trained Keras ``model`` with every attack of ``settings`` (default: :class:`ModelAuditSettings`).

    ``members``: (x, y), records the model trained on; ``nonmembers``: (x, y), records from the same source it
    never saw (both are scored); ``population``: (x, y) or None, more records it never saw (they calibrate the
    population attacks and train the reference models).
    """
    from fedaudit.attacks.base import headline
    from fedaudit.auditor import audit_records

    settings = (settings or ModelAuditSettings()).check()
    xm, ym = _pair(members, "members")
    xn, yn = _pair(nonmembers, "nonmembers")
    population = _pair(population, "population")
    if len(ym) < 2 or len(yn) < 2:
        raise DataError(f"members, nonmembers: need at least 2 records each, got {len(ym)} and {len(yn)}")
    x, y = np.concatenate([xm, xn]), np.concatenate([ym, yn])
    member = np.r_[np.ones(len(ym), bool), np.zeros(len(yn), bool)]
    classes = int(model.output_shape[-1])
    top = max(int(y.max()), int(population[1].max()) if population is not None and len(population[1]) else -1)
    if top >= classes:
        raise ModelError(f"model: has {classes} outputs, but the labels go up to {top}")
    records = audit_records(np.where(member, 0, -1), y, 1, folds=settings.folds,
                            attack_fraction=settings.attack_fraction, seed=settings.seed)
    if not np.array_equal(records.index, np.arange(len(y))):
        raise DataError("members, nonmembers: the audited records came back in another order")
    with tempfile.TemporaryDirectory(prefix="fedaudit-model-") as folder:
        target = _Target(model, settings, Path(folder))
        logits = target.logits(x).astype(np.float64)
        scores = _fitted_scores(settings, target, x, y, member, classes, records)
        scores.update(_score_attacks(settings, target, logits, x, y, member, classes, population, records))
    scores = {a: np.asarray(scores[a], dtype=np.float64) for a in settings.attacks}
    summaries = _summaries(settings, scores, member, y, logits)
    for a, s in summaries.items():
        log.debug("attack %s: AUC %.3f, TPR %.3f at 1%% FPR", a, s.auc, s.tpr_at_1pct)
    head = headline(settings.attacks)
    risk = _membership_probability(head, scores[head], member, records)
    return ModelAudit(settings=settings, attacks=summaries, scores=scores, headline=head, risk=risk, member=member,
                      labels=y, logits=logits, known=records.known)
