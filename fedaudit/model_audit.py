"""Audit one saved Keras model: ``fedaudit audit-model MODEL.keras --members FILE --nonmembers FILE``.

The attacks and reference models are chosen as in a scenario's ``[audit]`` table, with the same names and defaults:

- ``whitebox`` and ``blackbox``: logistic regression, cross-fitted, on the per-record features the federated
  auditor computes (:mod:`fedaudit.auditor.features`; ``blackbox`` reads the outputs only, ``whitebox`` adds the
  per-layer gradient norms). The adversary knows ``attack_fraction`` of the members and as many non-members
  (:mod:`fedaudit.auditor.records`), and every record is scored by an attack fitted without it;
- ``loss``, ``confidence``, ``entropy``, ``modified-entropy``: threshold attacks (nothing to fit);
- ``population``: attack P, calibrated on the population file's records, or (without one) cross-fitted on the
  known non-members;
- ``reference``, ``lira-*``, ``rmia-*``: :func:`fedaudit.attacks.audit_model`'s reference models, of the saved
  architecture (``keras-file``), trained on the population file's records (``--reference-models N``).

What it writes (the run-dir contract of DESIGN.md, for one model): ``summary.json`` (``"kind": "model-audit"``,
every attack's metrics with intervals, the headline attack), ``records.csv`` (per record: its file and row,
membership, label, loss, the membership probability ``risk`` and each attack's score ``score_<attack>``),
``member_probs.npy`` / ``nonmember_probs.npy`` (the membership probability of the headline attack),
``plots/*.png`` and ``report.html``.
Every file is written atomically. Every check that needs no TensorFlow (files, formats, options) runs first.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fedaudit.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

KIND = "model-audit"
DEFAULT_ATTACKS = ("whitebox", "blackbox", "loss")     # [audit] attacks' default


@dataclass
class ModelAuditSettings:
    """The audit's choices, as in ``[audit]`` (attacks, reference_models, attack_fraction, folds) and the
    reference models' training recipe (match how the target was trained)."""

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
# the attacks


def _fitted_scores(settings, model_path, model, records, audit) -> dict:
    """The trained attacks (whitebox, blackbox, ...): cross-fitted logistic regression on the auditor's
    features of the model, each on the columns the registry says it reads."""
    from fedaudit.auditor.attack import cross_fit, trained_attacks, spec
    from fedaudit.auditor.features import ModelProbe

    wanted = trained_attacks(settings.attacks)
    if not wanted:
        return {}
    probe = ModelProbe("keras-file", {"path": str(Path(model_path).resolve())}, records.x.shape[1:],
                       records.num_classes, seed=settings.seed)
    features = probe.view(model.get_weights(), None, None, records.x, records.y).features
    usable = ~np.isnan(features).all(axis=0)          # update features (loss drop, cosines) need a previous model
    member = records.member
    out = {}
    for a in wanted:
        cols = np.intersect1d(np.asarray(spec(a).columns(list(probe.feature_names))), np.flatnonzero(usable))
        out[a] = cross_fit(features[:, cols], member, audit.fold, audit.known)
    return out


def _score_attacks(settings, model_path, model, logits, records, population, audit) -> dict:
    """The score attacks, each given what the registry says it needs: the logits alone, the population
    (the --population file, or without one the known non-members, cross-fitted), or reference models."""
    from fedaudit.attacks.base import AttackInputs, attack_spec, run_score_attack
    from fedaudit.auditor.shard import population_rows

    plain = [a for a in settings.attacks if not attack_spec(a).trained and a not in settings.reference_attacks]
    calibrated = [a for a in plain if "population" in attack_spec(a).needs]
    flat = records.x.reshape(len(records.x), -1)
    out = {}
    for a in plain:
        if a not in calibrated:
            feats = flat if "features" in attack_spec(a).needs else None
            out[a] = run_score_attack(a, AttackInputs(logits, records.y, features=feats))
    pop_logits = pop_labels = x_pop = None
    if population is not None and (calibrated or settings.reference_attacks):
        from fedaudit.attacks.reference_models import logits_function

        x_pop = _fit_to_model(population.x, model.input_shape[1:], "--population")
        pop_logits = logits_function(model)(x_pop)
        pop_labels = population.y
    for a in calibrated:
        uses_features = "features" in attack_spec(a).needs
        if pop_logits is not None:
            extra = {"features": flat, "population_features": x_pop.reshape(len(x_pop), -1)} if uses_features else {}
            out[a] = run_score_attack(a, AttackInputs(
                target_logits=logits, labels=records.y, population_logits=pop_logits, population_labels=pop_labels,
                **extra))
        else:   # calibrated on the adversary's known non-members, cross-fitted
            out[a] = population_rows(logits, records.y, audit.fold, audit.known & ~records.member, name=a,
                                     features=flat if uses_features else None)
    if settings.reference_attacks:
        if population is None:
            raise DataError(f"--population: attacks {', '.join(settings.reference_attacks)} train reference models "
                            "on population records (records the model never saw); give a --population file")
        from fedaudit.attacks.audit import prepare_audit, score_all

        m = records.member
        x_pop = _fit_to_model(population.x, model.input_shape[1:], "--population")
        data = prepare_audit(model, records.x[m], records.y[m], records.x[~m], records.y[~m], x_population=x_pop,
                             y_population=pop_labels, attacks=settings.reference_attacks,
                             reference_models=settings.reference_models, model_name="keras-file",
                             model_options={"path": str(Path(model_path).resolve())},
                             num_classes=records.num_classes, epochs=settings.epochs, batch_size=settings.batch_size,
                             learning_rate=settings.learning_rate, optimizer=settings.optimizer, seed=settings.seed,
                             cache_dir=None, parallel=settings.parallel)
        out.update(score_all(data, settings.reference_attacks))
    return out


def _membership_probability(name: str, scores: np.ndarray, records, audit) -> np.ndarray:
    """The headline attack's membership probability: the fitted attacks' log-odds through a sigmoid; a score
    attack's scores calibrated by a cross-fitted logistic regression on the known records (monotone per fold)."""
    from fedaudit.auditor.attack import cross_fit, sigmoid, spec

    log_odds = scores if spec(name).trained else cross_fit(scores[:, None], records.member, audit.fold, audit.known)
    return sigmoid(log_odds)


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
    """Audit the model saved at ``model_path`` on the member and non-member files; return the run directory."""
    from fedaudit.metrics import summarize
    from fedaudit.models.keras_file import check_model_file
    from fedaudit.rundir import atomic_save_npy, atomic_write_text, json_safe

    started = time.time()
    settings = (settings or ModelAuditSettings()).check()
    check_model_file(model_path, "MODEL")
    run_dir = resolve_out(out, model_path)
    records, population = load_inputs(members, nonmembers, population, file_options)

    # TensorFlow from here on
    from fedaudit.attacks.reference_models import logits_function
    from fedaudit.auditor.attack import headline
    from fedaudit.auditor.records import audit_records
    from fedaudit.models.keras_file import as_logits, check_shapes, ends_in_softmax, load_keras_model

    saved = load_keras_model(model_path, "MODEL")
    records.x = _fit_to_model(records.x, saved.input_shape[1:], "--members, --nonmembers")
    check_shapes(saved, records.x.shape[1:], None, "MODEL")
    classes = int(saved.output_shape[-1])
    if records.num_classes > classes:
        raise ModelError(f"MODEL: has {classes} outputs, but the files hold labels up to {records.num_classes - 1}")
    records.num_classes = classes
    softmax = ends_in_softmax(saved)
    model = as_logits(saved)
    owner = np.where(records.member, 0, -1)
    audit = audit_records(owner, records.y, 1, folds=settings.folds, attack_fraction=settings.attack_fraction,
                          seed=settings.seed)
    assert np.array_equal(audit.index, np.arange(len(owner)))   # members first, then non-members, in order
    logits = logits_function(model)(records.x).astype(np.float64)
    scores = _fitted_scores(settings, model_path, model, records, audit)
    scores.update(_score_attacks(settings, model_path, model, logits, records, population, audit))
    scores = {a: np.asarray(scores[a], dtype=np.float64) for a in settings.attacks}
    m = records.member
    summaries = {}
    for a, s in scores.items():
        ok = np.isfinite(s)
        summaries[a] = summarize(s[ok & m], s[ok & ~m], delta=settings.delta)
    head = headline(settings.attacks)
    risk = _membership_probability(head, scores[head], records, audit)

    run_dir.mkdir(parents=True, exist_ok=True)
    right = np.argmax(logits, axis=1) == records.y
    summary = {
        "kind": KIND,
        "model": {"path": str(Path(model_path).resolve()), "input_shape": list(saved.input_shape[1:]),
                  "num_classes": classes, "parameters": int(saved.count_params()), "ends_in_softmax": softmax,
                  "member_accuracy": float(right[m].mean()), "nonmember_accuracy": float(right[~m].mean())},
        "data": {**records.files, "n_members": int(m.sum()),
                 "n_nonmembers": int((~m).sum()), "n_population": 0 if population is None else len(population),
                 "known_of_each": int(audit.known[m].sum())},
        "settings": asdict(settings),
        "headline": head,
        "attacks": {a: s.to_dict() for a, s in summaries.items()},
        "risk": summarize(risk[m & np.isfinite(risk)], risk[~m & np.isfinite(risk)]).to_dict(),
        "seconds": round(time.time() - started, 3),
    }
    atomic_write_text(run_dir / "records.csv", _records_csv(records, logits, scores, risk))
    atomic_save_npy(run_dir / "member_probs.npy", risk[m].astype(np.float32))
    atomic_save_npy(run_dir / "nonmember_probs.npy", risk[~m].astype(np.float32))
    atomic_write_text(run_dir / "summary.json", json.dumps(json_safe(summary), indent=2) + "\n")
    if report:
        from fedaudit.run import write_report

        write_report(run_dir)          # the single-model report, for this run directory's kind of summary.json
    return run_dir


__all__ = ["run_model_audit", "ModelAuditSettings", "load_inputs", "score_column", "KIND", "DEFAULT_ATTACKS"]
