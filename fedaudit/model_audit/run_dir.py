"""``fedaudit audit-model``: the files read and checked, :func:`fedaudit.model_audit.core.audit` run, the run
directory written (``summary.json``, ``records.csv``, ``member_probs.npy``, ``nonmember_probs.npy``, the report)."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from fedaudit.errors import ConfigError, DataError, ModelError
from fedaudit.model_audit.core import audit
from fedaudit.model_audit.settings import ModelAuditSettings

KIND = "model-audit"


@dataclass
class Records:
    """The audited records: members, then non-members; ``row`` and ``files`` say which file and row each came from."""

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


def _attribute_inference(model, records, population, column: int, classes: int, seed: int) -> dict:
    """The attribute inference on the audited model: fitted on the population records (without any, on half the
    non-members), scored on the members and the other non-members."""
    import tensorflow as tf

    from fedaudit.inferences.attributes import AttributeInference, infer_attribute
    from fedaudit.models.keras_file import ends_in_softmax

    softmax = ends_in_softmax(model)

    def probs(z):
        out = model(np.asarray(z, dtype=np.float32), training=False)
        return np.asarray(out if softmax else tf.nn.softmax(out), dtype=np.float64)

    m = records.member
    x, y = [records.x[m], records.x[~m]], [records.y[m], records.y[~m]]
    member = [np.ones(int(m.sum()), bool), np.zeros(int((~m).sum()), bool)]
    fit = [np.zeros(int(m.sum()), bool), np.zeros(int((~m).sum()), bool)]
    if population is not None:
        x.append(population[0]), y.append(np.asarray(population[1])), member.append(np.zeros(len(population[1]), bool))
        fit.append(np.ones(len(population[1]), bool))
    else:
        fit[1][np.random.default_rng(seed).permutation(fit[1].size)[: fit[1].size // 2]] = True
    width = int(np.prod(records.x.shape[1:]))
    if not 0 <= column < width:
        raise ConfigError(f"--sensitive-attribute: column {column} is outside the records' {width} feature columns "
                          f"(allowed: 0..{width - 1})")
    result = infer_attribute(probs, np.concatenate(x), np.concatenate(y).astype(np.int64), column,
                             np.concatenate(member), np.concatenate(fit), classes, seed=seed)
    inf = AttributeInference()
    return {"family": inf.family, "title": inf.title, "description": inf.description, "rounds": 1,
            "last_round": None, "last": result, "fitted_on": "population" if population is not None else
            "half of the non-members"}


def run_model_audit(model_path, members, nonmembers, population=None, out=None, *,
                    settings: ModelAuditSettings | None = None, file_options: dict | None = None,
                    report: bool = True, sensitive_attribute: int | None = None) -> Path:
    """Audit the model saved at ``model_path`` on the member and non-member files with :func:`audit`; return
    the run directory. ``sensitive_attribute`` (a feature column): also infer it through the model, against
    imputation (:mod:`fedaudit.inferences.attributes`), into ``summary.json``'s ``inferences``."""
    from fedaudit.metrics import summarize
    from fedaudit.models.keras_file import check_model_file
    from fedaudit.rundir import atomic_save_npy, atomic_write_text, json_safe

    started = time.time()
    settings = (settings or ModelAuditSettings()).check()
    check_model_file(model_path, "MODEL")
    run_dir = resolve_out(out, model_path)
    records, population = load_inputs(members, nonmembers, population, file_options)
    width = int(np.prod(records.x.shape[1:]))
    if sensitive_attribute is not None and not (isinstance(sensitive_attribute, int) and 0 <= sensitive_attribute < width):
        raise ConfigError(f"--sensitive-attribute: got {sensitive_attribute!r}; allowed: a feature column 0..{width - 1}")

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
    if sensitive_attribute is not None:
        summary["inferences"] = {"attributes": _attribute_inference(saved, records, pop, int(sensitive_attribute),
                                                                    classes, settings.seed)}
    atomic_write_text(run_dir / "records.csv", _records_csv(records, logits, scores, risk))
    atomic_save_npy(run_dir / "member_probs.npy", risk[m].astype(np.float32))
    atomic_save_npy(run_dir / "nonmember_probs.npy", risk[~m].astype(np.float32))
    atomic_write_text(run_dir / "summary.json", json.dumps(json_safe(summary), indent=2) + "\n")
    if report:
        from fedaudit.run import write_report

        write_report(run_dir)          # the single-model report, for this run directory's kind of summary.json
    return run_dir
