"""Audit one trained Keras model: :func:`audit` (Python) and ``fedaudit audit-model MODEL.keras`` (files).

:func:`audit` is the single-model audit: a model, its members, non-members and (optionally) population records,
and a :class:`ModelAuditSettings` in; a :class:`ModelAudit` (every attack's summary and scores, the headline
attack and each record's membership probability) out. ``fedaudit audit-model`` (:func:`run_model_audit`) reads
the files, calls it and writes a run directory; :func:`fedaudit.attacks.audit_model` builds the settings from
keywords and calls it. The attacks are named as in a scenario's ``[audit]`` table, with the same defaults:

- ``whitebox`` and ``blackbox``: logistic regression, cross-fitted, on the per-record features the federated
  auditor computes (:mod:`fedaudit.auditor.features`; ``blackbox`` reads the output features only, ``whitebox``
  adds the per-layer gradient norms). The adversary knows ``attack_fraction`` of the members and as many
  non-members (:mod:`fedaudit.auditor.records`), and every record is scored by an attack fitted without it;
- ``loss``, ``confidence``, ``entropy``, ``modified-entropy``: threshold attacks (nothing to fit);
- ``population``, ``qmia``: calibrated on the population records, or (without any) cross-fitted on the known
  non-members;
- ``reference``, ``lira-*``, ``rmia-*``, ``fedmia``: reference models of the audited architecture
  (:func:`fedaudit.attacks.audit.prepare_audit`), trained on the population records.

The membership probability is the headline attack's: the trained attacks' log-odds through a sigmoid, a score
attack's scores calibrated by a cross-fitted logistic regression on the known records.

What ``audit-model`` writes: ``summary.json`` (``"kind": "model-audit"``, every attack's metrics with intervals,
the headline attack), ``records.csv`` (per record: its file and row, membership, label, loss, the membership
probability ``risk`` and each attack's score ``score_<attack>``), ``member_probs.npy`` / ``nonmember_probs.npy``
(the membership probability of the headline attack), ``plots/*.png`` and ``report.html``. Every file is
written atomically. Every check that needs no TensorFlow (files, formats, options) runs first.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from fedaudit.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

KIND = "model-audit"
DEFAULT_ATTACKS = ("whitebox", "blackbox", "loss")     # [audit] attacks' default
#: how the audited model's outputs become logits
OUTPUTS = ("auto", "logits", "probabilities")


@dataclass
class ModelAuditSettings:
    """The audit's choices, as in ``[audit]`` (attacks, reference_models, attack_fraction, folds), and the
    reference models': their architecture (``model_name``, a registered model, and ``model_options``; None:
    the audited model's own, saved for the audit) and training recipe (match how the target was trained).

    ``outputs``: ``auto`` (a final softmax is removed, the model's own logits are read), ``logits`` (the model
    outputs logits) or ``probabilities`` (logits are the log of its clipped outputs). ``attack_options``:
    {attack: {option: value}} for the score attacks that read reference models or a population file.
    ``slices``: per-class, per-loss-decile and by-correctness metrics in every summary.
    """

    attacks: list = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    reference_models: int = 0
    attack_fraction: float = 0.5
    folds: int = 5
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    parallel: bool = False
    delta: float = 1e-5
    alpha: float = 0.05
    model_name: str | None = None
    model_options: dict = field(default_factory=dict)
    train_size: int | None = None
    cache_dir: str | None = None
    outputs: str = "auto"
    attack_options: dict = field(default_factory=dict)
    slices: bool = False

    def check(self) -> "ModelAuditSettings":
        from fedaudit.attacks.base import attack_spec
        from fedaudit.config import OPTIMIZERS, attack_names

        if not self.attacks:
            raise ConfigError("--attacks: name at least one attack")
        allowed = attack_names()
        for a in self.attacks:
            if a not in allowed:
                raise ConfigError(f"--attacks: unknown attack {a!r}; allowed: {', '.join(allowed)}")
        self.attacks = list(dict.fromkeys(self.attacks))
        needs = [a for a in self.attacks if attack_spec(a).uses_reference_models or attack_spec(a).needs_null]
        online = [a for a in needs if attack_spec(a).online]
        if needs and self.reference_models < 1:
            raise ConfigError(f"--reference-models: attacks {', '.join(needs)} need reference models; allowed: "
                              "--reference-models N with N >= 1 (N >= 2 for the online attacks)")
        if online and self.reference_models < 2:
            raise ConfigError(f"--reference-models: online attacks {', '.join(online)} need at least 2 reference "
                              f"models (each record IN for half of them), got {self.reference_models}")
        if not 0 < self.attack_fraction < 1:
            raise ConfigError(f"--attack-fraction: must be in (0, 1), got {self.attack_fraction}")
        for name, value, low in (("--folds", self.folds, 2), ("--epochs", self.epochs, 1),
                                 ("--batch-size", self.batch_size, 1), ("--reference-models", self.reference_models, 0),
                                 ("--seed", self.seed, 0)):
            if value < low:
                raise ConfigError(f"{name}: must be at least {low}, got {value}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate: must be positive, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer: unknown optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.outputs not in OUTPUTS:
            raise ConfigError(f"outputs: unknown {self.outputs!r}; allowed: {', '.join(OUTPUTS)}")
        unknown = sorted(set(self.attack_options) - set(self.attacks))
        if unknown:
            raise ConfigError(f"attack_options: options for attacks not audited: {', '.join(unknown)}; allowed: "
                              f"{', '.join(self.attacks)}")
        return self

    @property
    def reference_attacks(self) -> list:
        """The attacks that read reference models (FedMIA's null models are the offline ones here)."""
        from fedaudit.attacks.base import attack_spec

        return [a for a in self.attacks if attack_spec(a).uses_reference_models or attack_spec(a).needs_null]


@dataclass
class Records:
    """The audited records: members, then non-members; ``source`` says which file and row each came from."""

    x: np.ndarray
    y: np.ndarray
    member: np.ndarray
    row: np.ndarray
    num_classes: int
    files: dict


def _load(label: str, path, options: dict):
    from fedaudit.data.datasets import load_records

    return load_records(path, option=label, **options)


def load_inputs(members, nonmembers, population=None, file_options: dict | None = None):
    """(Records, population dataset or None): the files read and checked (no TensorFlow)."""
    file_options = dict(file_options or {})
    m = _load("--members", members, file_options)
    n = _load("--nonmembers", nonmembers, file_options)
    p = _load("--population", population, file_options) if population is not None else None
    for label, d in (("--nonmembers", n), ("--population", p)):
        if d is not None and d.input_shape != m.input_shape:
            raise DataError(f"{label}: records have shape {list(d.input_shape)}, but --members records have "
                            f"{list(m.input_shape)}; all files must hold records of the same shape")
    if len(m) < 2 or len(n) < 2:
        raise DataError(f"--members, --nonmembers: need at least 2 records each, got {len(m)} and {len(n)}")
    classes = max(d.num_classes for d in (m, n, p) if d is not None)
    records = Records(x=np.concatenate([m.x, n.x]), y=np.concatenate([m.y, n.y]),
                      member=np.r_[np.ones(len(m), bool), np.zeros(len(n), bool)],
                      row=np.r_[np.arange(len(m)), np.arange(len(n))], num_classes=classes,
                      files={"members": str(members), "nonmembers": str(nonmembers),
                             "population": None if population is None else str(population)})
    return records, p


def _fit_to_model(x: np.ndarray, input_shape: tuple, label: str) -> np.ndarray:
    """Records reshaped to the model's input when only the layout differs (flat files of image records)."""
    if x.shape[1:] == tuple(input_shape):
        return x
    if int(np.prod(x.shape[1:])) == int(np.prod(input_shape)):
        return x.reshape((len(x), *input_shape))
    raise ModelError(f"{label}: records have shape {list(x.shape[1:])} ({int(np.prod(x.shape[1:]))} values), but the "
                     f"model takes {list(input_shape)} ({int(np.prod(input_shape))} values)")


def resolve_out(out, model_path) -> Path:
    from fedaudit.rundir import new_run_dir

    if out is None:
        return new_run_dir("runs", f"{Path(model_path).stem}-audit")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: already exists and is not an empty folder; name a new or empty folder")
    return out


# ------------------------------------------------------------------------------------------------------------
# the audit


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
    from fedaudit.attacks.audit import prepare_audit, score_all
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
                             epochs=settings.epochs, batch_size=settings.batch_size,
                             learning_rate=settings.learning_rate, optimizer=settings.optimizer, seed=settings.seed,
                             cache_dir=settings.cache_dir, parallel=settings.parallel, train_size=settings.train_size,
                             from_probabilities=target.probabilities)
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


# ------------------------------------------------------------------------------------------------------------
# the run directory


def score_column(attack: str) -> str:
    """records.csv's column of an attack's scores (``loss`` itself is the record's loss)."""
    return f"score_{attack}"


def _records_csv(records, logits, scores: dict, risk: np.ndarray) -> str:
    from fedaudit.attacks.scores import correct, loss

    losses, right = loss(logits, records.y), correct(logits, records.y)
    names = list(scores)
    buffer = io.StringIO()
    w = csv.writer(buffer, lineterminator="\n")
    w.writerow(["record", "file", "row", "member", "label", "loss", "correct", "risk",
                *(score_column(a) for a in names)])
    for i in range(len(records.y)):
        w.writerow([i, "members" if records.member[i] else "nonmembers", int(records.row[i]), int(records.member[i]),
                    int(records.y[i]), f"{losses[i]:.6g}", int(right[i]), f"{risk[i]:.6g}",
                    *(f"{scores[a][i]:.6g}" for a in names)])
    return buffer.getvalue()


def run_model_audit(model_path, members, nonmembers, population=None, out=None, *,
                    settings: ModelAuditSettings | None = None, file_options: dict | None = None,
                    report: bool = True) -> Path:
    """Audit the model saved at ``model_path`` on the member and non-member files with :func:`audit`; return
    the run directory."""
    from fedaudit.metrics import summarize
    from fedaudit.models.keras_file import check_model_file
    from fedaudit.rundir import atomic_save_npy, atomic_write_text, json_safe

    started = time.time()
    settings = (settings or ModelAuditSettings()).check()
    check_model_file(model_path, "MODEL")
    run_dir = resolve_out(out, model_path)
    records, population = load_inputs(members, nonmembers, population, file_options)

    # TensorFlow from here on
    from fedaudit.models.keras_file import check_shapes, ends_in_softmax, load_keras_model

    saved = load_keras_model(model_path, "MODEL")
    records.x = _fit_to_model(records.x, saved.input_shape[1:], "--members, --nonmembers")
    check_shapes(saved, records.x.shape[1:], None, "MODEL")
    classes = int(saved.output_shape[-1])
    if records.num_classes > classes:
        raise ModelError(f"MODEL: has {classes} outputs, but the files hold labels up to {records.num_classes - 1}")
    records.num_classes = classes
    pop = None
    if population is not None:
        pop = (_fit_to_model(population.x, saved.input_shape[1:], "--population"), population.y)
    if settings.model_name is None:     # reference models and features: the saved architecture
        settings = replace(settings, model_name="keras-file",
                           model_options={"path": str(Path(model_path).resolve())})
    m = records.member
    result = audit(saved, (records.x[m], records.y[m]), (records.x[~m], records.y[~m]), pop, settings)
    logits, scores, risk = result.logits, result.scores, result.risk

    run_dir.mkdir(parents=True, exist_ok=True)
    right = np.argmax(logits, axis=1) == records.y
    summary = {
        "kind": KIND,
        "model": {"path": str(Path(model_path).resolve()), "input_shape": list(saved.input_shape[1:]),
                  "num_classes": classes, "parameters": int(saved.count_params()),
                  "ends_in_softmax": ends_in_softmax(saved),
                  "member_accuracy": float(right[m].mean()), "nonmember_accuracy": float(right[~m].mean())},
        "data": {**records.files, "n_members": int(m.sum()),
                 "n_nonmembers": int((~m).sum()), "n_population": 0 if population is None else len(population),
                 "known_of_each": int(result.known[m].sum())},
        "settings": asdict(settings),
        "headline": result.headline,
        "attacks": {a: s.to_dict() for a, s in result.attacks.items()},
        "risk": summarize(risk[m & np.isfinite(risk)], risk[~m & np.isfinite(risk)]).to_dict(),
        "seconds": round(time.time() - started, 3),
    }
    atomic_write_text(run_dir / "records.csv", _records_csv(records, logits, scores, risk))
    atomic_save_npy(run_dir / "member_probs.npy", risk[m].astype(np.float32))
    atomic_save_npy(run_dir / "nonmember_probs.npy", risk[~m].astype(np.float32))
    atomic_write_text(run_dir / "summary.json", json.dumps(json_safe(summary), indent=2) + "\n")
    if report:
        from fedaudit.report.model_report import build_model_report

        build_model_report(run_dir)
    return run_dir


__all__ = ["audit", "ModelAudit", "ModelAuditSettings", "run_model_audit", "load_inputs", "score_column", "KIND",
           "DEFAULT_ATTACKS", "OUTPUTS"]
