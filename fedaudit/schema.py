"""The run directory's files, typed: one round's line of ``rounds.jsonl``, a threat model's result in it, the run's
``summary.json`` and ``status.json``, and the keys of the per-round arrays under ``audit/``.

Every writer and reader of these files goes through this module: the auditor and the driver build a
:class:`RoundLine` and merge it into ``rounds.jsonl``, the aggregation writes a :class:`RunSummary`, the run's
state is a :class:`RunStatus`, and the report, the comparison and the suites read the same classes. The readers
accept the files of earlier versions (``schema_version`` absent: version 1) and keep keys they do not know in
``extra``, so that nothing a newer writer added is lost when an older reader rewrites a file.

Names that meant two things in version 1 are split: a round line's ``accuracy`` (the global model's accuracy on
the held-out test split) is ``model_accuracy``, and a threat model's ``accuracy`` (the attack's balanced
accuracy) is ``attack_accuracy``. Both old names are read.

NumPy-free and TensorFlow-free: plain dataclasses and JSON types.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: the version this module writes; readers accept every version up to it
SCHEMA_VERSION = 2

#: the four headline numbers of a threat model's result (a round's, a client's, or the run's)
HEADLINE_KEYS = ("auc", "tpr_at_1pct", "tpr_at_0_1pct", "attack_accuracy")

#: key separator inside the per-round ``audit/round_NNNN.npz`` files ("server__score__loss")
SEP = "__"

#: the files of a run directory this module reads and writes
ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.json"
STATUS_FILE = "status.json"


# ---- small helpers ----------------------------------------------------------------------------------------

def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _num(value) -> float | None:
    """A JSON number as float (None, NaN, bool or anything else: None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _split(cls, data: dict, renames: dict | None = None) -> tuple[dict, dict]:
    """(known fields, extra) of a JSON object for dataclass ``cls``, with old names renamed."""
    data = dict(data or {})
    for old, new in (renames or {}).items():
        if old in data and new not in data:
            data[new] = data.pop(old)
        elif old in data:
            data.pop(old)
    known = _fields(cls) - {"extra"}
    return {k: v for k, v in data.items() if k in known}, {k: v for k, v in data.items() if k not in known}


def _out(obj, drop_none: tuple = ()) -> dict:
    """A dataclass as a JSON object: its fields (``extra`` spread in first, so that fields win)."""
    out = dict(getattr(obj, "extra", {}) or {})
    for f in dataclasses.fields(obj):
        if f.name == "extra":
            continue
        value = getattr(obj, f.name)
        if value is None and f.name in drop_none:
            continue
        if f.name == "schema_version":
            value = SCHEMA_VERSION         # what is written is in this version's form
        if dataclasses.is_dataclass(value):
            value = value.to_dict()
        elif isinstance(value, list):
            value = [v.to_dict() if dataclasses.is_dataclass(v) else v for v in value]
        elif isinstance(value, dict):
            value = {k: (v.to_dict() if dataclasses.is_dataclass(v) else v) for k, v in value.items()}
        out[f.name] = value
    return out


def headline_of(obj: dict | None) -> dict:
    """The four headline numbers of a result or a metrics summary (old ``accuracy`` read as ``attack_accuracy``)."""
    obj = obj or {}
    out = {k: _num(obj.get(k)) for k in HEADLINE_KEYS}
    if out["attack_accuracy"] is None:
        out["attack_accuracy"] = _num(obj.get("accuracy"))
    return out


def metrics_summary(obj) -> dict | None:
    """A metrics summary (:meth:`fedaudit.metrics.Summary.to_dict`) with the attack's accuracy under its own name
    (``attack_accuracy``; the old ``accuracy`` is read too), or None."""
    if not isinstance(obj, dict):
        return None
    out = dict(obj)
    if "attack_accuracy" not in out and "accuracy" in out:
        out["attack_accuracy"] = out.pop("accuracy")
        if "accuracy_ci" in out:
            out["attack_accuracy_ci"] = out.pop("accuracy_ci")
    return out


# ---- rounds.jsonl ---------------------------------------------------------------------------------------------

@dataclass
class ClientResult:
    """One client's headline numbers in one round (or across rounds) of a threat model."""

    client: int
    records: int | None = None
    auc: float | None = None
    tpr_at_1pct: float | None = None
    tpr_at_0_1pct: float | None = None
    attack_accuracy: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "ClientResult":
        known, extra = _split(cls, data, {"accuracy": "attack_accuracy"})
        known["client"] = int(known.get("client", -1))
        for k in HEADLINE_KEYS:
            known[k] = _num(known.get(k))
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        return _out(self)


@dataclass
class ViewResult:
    """A threat model's result in one round (``rounds.jsonl``: the line's entry under the threat model's name)."""

    attack: str | None = None                 # the headline attack
    auc: float | None = None
    tpr_at_1pct: float | None = None
    tpr_at_0_1pct: float | None = None
    attack_accuracy: float | None = None      # the attack's balanced accuracy
    summary: dict | None = None               # the headline attack's metrics with intervals
    attacks: dict = field(default_factory=dict)   # {attack: metrics summary or None}
    records: dict = field(default_factory=dict)   # members, nonmembers, population_sample
    clients: list = field(default_factory=list)   # [ClientResult]
    skipped: str | None = None                # why the view has no result this round
    view: str | None = None                   # "aggregate-only" for the server under secure aggregation
    clients_audited: list | None = None       # the clients whose own model was attacked
    source_inference: dict | None = None
    low_fpr_attack: str | None = None         # the attack reported at 1% FPR, chosen on the known records
    low_fpr: dict | None = None               # its metrics with intervals, on the unknown records
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "ViewResult":
        known, extra = _split(cls, data, {"accuracy": "attack_accuracy"})
        for k in HEADLINE_KEYS:
            known[k] = _num(known.get(k))
        known["summary"] = metrics_summary(known.get("summary"))
        known["low_fpr"] = metrics_summary(known.get("low_fpr"))
        known["attacks"] = {a: metrics_summary(s) for a, s in (known.get("attacks") or {}).items()}
        known["clients"] = [ClientResult.from_dict(c) for c in known.get("clients") or [] if isinstance(c, dict)]
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        return _out(self, drop_none=("skipped", "view", "clients_audited", "source_inference", "low_fpr_attack",
                                     "low_fpr"))

    def headline_numbers(self) -> dict:
        """The four headline numbers (from the summary when the line has only that)."""
        out = {k: getattr(self, k) for k in HEADLINE_KEYS}
        if all(v is None for v in out.values()) and self.summary:
            out = headline_of(self.summary)
        return out

    def value(self, key: str) -> float | None:
        """A headline number, or any number of the summary (``auc_ci`` is a list: use :meth:`interval`)."""
        if key in HEADLINE_KEYS and getattr(self, key) is not None:
            return getattr(self, key)
        return _num((self.summary or {}).get(key))

    def interval(self, key: str) -> tuple[float | None, float | None]:
        ci = (self.summary or {}).get(key + "_ci") or [None, None]
        return (_num(ci[0]), _num(ci[1])) if len(ci) == 2 else (None, None)


@dataclass
class RoundLine:
    """One line of ``rounds.jsonl``: the round's utility (written by the driver as soon as the round is aggregated)
    and each audited threat model's result (merged in by the auditor)."""

    round: int
    model_accuracy: float | None = None      # the global model on the held-out test split
    loss: float | None = None                # the global model's loss on it
    train_loss: float | None = None          # the clients' mean training loss
    clients: list | None = None              # the clients that replied (or took part, under secure aggregation)
    failed: list = field(default_factory=list)
    non_finite_clients: list = field(default_factory=list)
    wall_seconds: float | None = None
    audit_seconds: float | None = None
    views: dict = field(default_factory=dict)  # {threat model: ViewResult}
    inferences: dict = field(default_factory=dict)  # {inference: its round's object} (fedaudit.inferences)
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def audit_failed(self) -> bool:
        """Whether the round's audit raised (``audit_error``, written by the auditor) and no audit of it is
        recorded (a later attempt, after ``--resume``, would have written its threat models' results)."""
        return bool(self.extra.get("audit_error")) and not self.views

    @classmethod
    def from_dict(cls, data: dict, view_names=None) -> "RoundLine":
        """A line as read. The entries of the threat models named in ``view_names`` (default: the registered ones,
        :mod:`fedaudit.threat_model`) are views, and so is any other object with a headline ``attack`` and its
        ``auc`` or the reason it was ``skipped``."""
        data = dict(data)
        if view_names is None:
            from fedaudit.threat_model import threat_model_names

            view_names = threat_model_names()
        views = {}
        for key in list(data):
            value = data[key]
            # a registered threat model's entry, or (a threat model not registered in this process) an object
            # with a headline attack and its numbers or the reason it was skipped
            if isinstance(value, dict) and (key in view_names or ("attack" in value and {"auc", "skipped"} & set(value))):
                views[key] = ViewResult.from_dict(data.pop(key))
        known, extra = _split(cls, data, {"accuracy": "model_accuracy"})
        known.pop("views", None)
        known["round"] = int(known.get("round", 0))
        known.setdefault("schema_version", 1)
        for k in ("model_accuracy", "loss", "train_loss"):
            known[k] = _num(known.get(k))
        return cls(**known, views=views, extra=extra)

    def to_dict(self) -> dict:
        out = _out(self)
        views = out.pop("views")
        if not out.get("inferences"):
            out.pop("inferences", None)
        out.update(views)
        return out

    def view(self, name: str) -> ViewResult | None:
        return self.views.get(name)


def normalise_line(data: dict, view_names=None) -> dict:
    """A rounds.jsonl line (or part of one) in this version's names, with no field added that it did not have:
    ``accuracy`` read as ``model_accuracy``, each threat model's entry through :class:`ViewResult`. Writers that
    merge parts of a line (the driver's utility, the auditor's results) merge normalised parts."""
    line = RoundLine.from_dict({"round": 0, **data}, view_names)
    out = {k: v for k, v in data.items() if k not in line.views and k != "accuracy"}
    if "accuracy" in data:
        out["model_accuracy"] = line.model_accuracy
    out.update({k: v.to_dict() for k, v in line.views.items()})
    out["schema_version"] = SCHEMA_VERSION
    return out


# ---- summary.json ---------------------------------------------------------------------------------------------

@dataclass
class ViewSummary:
    """A threat model's result across rounds (``summary.json``'s ``threat_models.<name>``): the metrics of the
    stacked attack with intervals, flat, beside how it was aggregated."""

    metrics: dict = field(default_factory=dict)   # auc, auc_ci, tpr_at_1pct, ..., attack_accuracy
    attack: str | None = None
    headline: str | None = None                   # the per-round headline attack the stack is built on
    rounds: list = field(default_factory=list)
    aggregations: dict = field(default_factory=dict)     # {stacked|max|mean|last: metrics or None}
    attacks_across_rounds: dict = field(default_factory=dict)
    stacked_rounds: list = field(default_factory=list)
    view: str | None = None                       # "aggregate-only" under secure aggregation
    low_fpr_attack: str | None = None             # the attack reported at 1% FPR, chosen on the known records
    low_fpr: dict | None = None                   # its metrics with intervals, on the unknown records
    extra: dict = field(default_factory=dict)

    _OWN = ("attack", "headline", "rounds", "aggregations", "attacks_across_rounds", "stacked_rounds", "view",
            "low_fpr_attack", "low_fpr")
    _OPTIONAL = ("view", "low_fpr_attack", "low_fpr")

    @classmethod
    def from_dict(cls, data: dict) -> "ViewSummary":
        data = dict(data or {})
        own = {k: data.pop(k) for k in cls._OWN if k in data}
        metrics = metrics_summary(data) or {}
        # numbers and their intervals are metrics; anything else unknown stays as it was
        extra = {k: metrics.pop(k) for k in list(metrics)
                 if not (k.endswith("_ci") or isinstance(metrics[k], (int, float)) or metrics[k] is None)}
        own["aggregations"] = {k: metrics_summary(v) for k, v in (own.get("aggregations") or {}).items()}
        own["attacks_across_rounds"] = {k: metrics_summary(v) for k, v in (own.get("attacks_across_rounds") or {}).items()}
        if "low_fpr" in own:
            own["low_fpr"] = metrics_summary(own["low_fpr"])
        return cls(metrics=metrics, **own, extra=extra)

    def to_dict(self) -> dict:
        out = {**self.extra, **self.metrics}
        for k in self._OWN:
            v = getattr(self, k)
            if v is not None or k not in self._OPTIONAL:
                out[k] = v
        return out

    def headline_numbers(self) -> dict:
        return headline_of(self.metrics)

    def value(self, key: str) -> float | None:
        return _num(self.metrics.get(key))

    def interval(self, key: str) -> tuple[float | None, float | None]:
        ci = self.metrics.get(key + "_ci") or [None, None]
        return (_num(ci[0]), _num(ci[1])) if len(ci) == 2 else (None, None)


@dataclass
class DpSummary:
    """``summary.json``'s ``dp`` object: the DP training's settings and the accountant's epsilon (filled by
    :func:`fedaudit.privacy.ensure_dp` from :func:`fedaudit.dp.scenario_dp`)."""

    mode: str | None = None                   # server, client or local
    noise_multiplier: float | None = None
    clipping_norm: float | None = None
    delta: float | None = None
    accountant_epsilon: float | None = None   # None: not computed, or no finite guarantee (no noise)
    accountant: str | None = None
    accountant_error: str | None = None       # why it was not computed
    level: str | None = None
    rounds: int | None = None
    sampling: str | None = None
    sampling_rate: float | None = None
    optimal_order: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "DpSummary":
        known, extra = _split(cls, data)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        return {k: v for k, v in _out(self).items() if v is not None or k in ("mode", "accountant_epsilon")}


@dataclass
class PrivacyEstimate:
    """One threat model's entry of ``summary.json``'s ``privacy`` object (see :mod:`fedaudit.privacy`): the DP
    guarantee against that adversary beside what the run measured."""

    accountant_epsilon: float | None = None   # the guarantee (None: none covers this adversary)
    canary_epsilon: float | None = None       # measured with canary clients, every round observed
    canary_epsilon_ci: list | None = None
    mia_epsilon_lower: float | None = None    # what the membership attacks imply (conservative end)
    delta: float | None = None                # the delta all of these are quoted at
    accountant_note: str | None = None
    canary_note: str | None = None
    canaries: int | None = None
    canary_rounds: int | None = None
    canary_mu: float | None = None
    canary_epsilon_final: float | None = None  # the final model only
    canary_epsilon_final_ci: list | None = None
    canary_mu_final: float | None = None
    per_client: list = field(default_factory=list)   # [{client, rounds, accountant_epsilon, mia_epsilon_lower}]
    extra: dict = field(default_factory=dict)

    _ALWAYS = ("accountant_epsilon", "canary_epsilon", "canary_epsilon_ci", "mia_epsilon_lower", "delta")

    @classmethod
    def from_dict(cls, data: dict) -> "PrivacyEstimate":
        known, extra = _split(cls, data)
        known["per_client"] = [c for c in known.get("per_client") or [] if isinstance(c, dict)]
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        return {k: v for k, v in _out(self).items()
                if k in self._ALWAYS or (v is not None and not (k == "per_client" and not v))}

    @property
    def measures_anything(self) -> bool:
        return not (self.accountant_epsilon is None and self.canary_epsilon is None and self.mia_epsilon_lower is None)


@dataclass
class InferenceSummary:
    """One entry of ``summary.json``'s ``inferences`` (an inference beyond membership, :mod:`fedaudit.inferences`):
    its attack family, the rounds it measured and its figures (each inference's own keys, in ``metrics``)."""

    family: str | None = None                 # a key of fedaudit.inferences.base.FAMILIES
    title: str | None = None
    description: str | None = None
    rounds: int = 0
    not_measured: str | None = None           # why no round measured it
    errors: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "InferenceSummary":
        known, metrics = _split(cls, data)
        known.pop("metrics", None)
        known["rounds"] = int(known.get("rounds") or 0)
        return cls(**known, metrics={**(data.get("metrics") or {}), **metrics})

    def to_dict(self) -> dict:
        out = {k: v for k, v in _out(self).items() if k != "metrics" and (v is not None and v != [] or k == "rounds")}
        return {**self.metrics, **out}


@dataclass
class RunSummary:
    """``summary.json`` of a federated run."""

    threat_models: dict = field(default_factory=dict)   # {name: ViewSummary}
    rounds: list = field(default_factory=list)
    attack: str | None = None
    records: dict = field(default_factory=dict)
    risk: dict = field(default_factory=dict)            # metrics of the record-level risk, and its threat_model
    source_inference: dict | None = None
    secure_aggregation: dict | None = None
    slices: dict = field(default_factory=dict)
    classes: Any = None
    dp: dict | None = None
    privacy: dict | None = None
    inferences: dict = field(default_factory=dict)      # {inference: InferenceSummary}, beyond membership
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "RunSummary":
        known, extra = _split(cls, data)
        known["threat_models"] = {k: ViewSummary.from_dict(v) for k, v in (known.get("threat_models") or {}).items()
                                  if isinstance(v, dict)}
        known["risk"] = metrics_summary(known.get("risk")) or {}
        known["inferences"] = {k: InferenceSummary.from_dict(v) for k, v in (known.get("inferences") or {}).items()
                               if isinstance(v, dict)}
        known.setdefault("schema_version", 1)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        out = _out(self, drop_none=("secure_aggregation", "dp", "privacy"))
        if not out.get("inferences"):
            out.pop("inferences", None)           # runs that measured none read as before
        return out

    def view(self, name: str) -> ViewSummary | None:
        return self.threat_models.get(name)

    def dp_summary(self) -> DpSummary | None:
        """The ``dp`` object, typed (None: the run trained without DP, or nothing filled it yet)."""
        return DpSummary.from_dict(self.dp) if isinstance(self.dp, dict) else None

    def privacy_of(self, name: str) -> PrivacyEstimate | None:
        """Threat model ``name``'s entry of the ``privacy`` object, typed (None: no entry)."""
        entry = (self.privacy or {}).get(name) if isinstance(self.privacy, dict) else None
        return PrivacyEstimate.from_dict(entry) if isinstance(entry, dict) else None

    def privacy_threat_models(self) -> list[str]:
        """The threat models the ``privacy`` object has an entry for (its ``utility`` is not one)."""
        if not isinstance(self.privacy, dict):
            return []
        return [k for k, v in self.privacy.items() if k != "utility" and isinstance(v, dict)]


# ---- status.json ----------------------------------------------------------------------------------------------

RUN_STATES = ("running", "finished", "failed", "interrupted")


@dataclass
class RunStatus:
    """``status.json``: where the run stands, and each attempt (the first run and every resume)."""

    state: str | None = None               # one of RUN_STATES (None: no status written)
    rounds: int | None = None              # the configured number of rounds
    rounds_complete: int | None = None
    resume_after_round: int | None = None
    signal: str | None = None              # the signal that interrupted the run
    interrupted_in_round: int | None = None
    error: str | None = None
    attempts: list = field(default_factory=list)
    updated: float | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "RunStatus":
        known, extra = _split(cls, data)
        known.setdefault("schema_version", 1)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        return _out(self)

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def resumes(self) -> int:
        """How many of the attempts resumed the run."""
        return sum(1 for a in self.attempts if isinstance(a, dict) and a.get("resumed"))


# ---- audit/round_NNNN.npz -------------------------------------------------------------------------------------

def round_key(view: str, *parts: str) -> str:
    """The key of a threat model's array in a round's npz: ``round_key("server", "score", "loss")`` is
    ``"server__score__loss"``."""
    for p in (view, *parts):
        if not p or SEP in p:
            raise ValueError(f"round array key part {p!r}: must be non-empty and without {SEP!r}")
    return SEP.join((view, *parts))


def parse_round_key(key: str) -> tuple[str, ...]:
    """The parts of a round array's key (``"server__score__loss"`` -> ``("server", "score", "loss")``)."""
    return tuple(key.split(SEP))


# ---- reading and writing the files ----------------------------------------------------------------------------

def _file(path, name: str) -> Path:
    """``path`` itself, or ``path / name`` when ``path`` is a run directory."""
    path = Path(path)
    return path / name if path.is_dir() else path


def _note(problems: list | None, path: Path, what: str, consequence: str = "") -> None:
    """Name a problem with a file in a warning (with its consequence) and in ``problems``."""
    log.warning("%s: %s%s", path, what, consequence)
    if problems is not None:
        problems.append(f"{path.name}: {what}")


def _read_object(path: Path, problems: list | None, consequence: str = "") -> dict | None:
    """A JSON object file (None if absent; None, named in a warning and in ``problems``, if unreadable)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        return data
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _note(problems, path, f"unreadable ({exc})", consequence)
        return None


def _write_object(path: Path, data: dict) -> Path:
    from fedaudit.rundir import atomic_write_text, json_safe

    return atomic_write_text(path, json.dumps(json_safe(data), indent=2) + "\n")


def round_number(value) -> int | None:
    """A line's ``round`` as an int (None: absent, a bool, or not a whole number)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def read_rounds(path, problems: list | None = None, view_names=None) -> list[RoundLine]:
    """The intact lines of ``rounds.jsonl`` (``path``: the file or its run directory), as :class:`RoundLine`.

    A line that is not a JSON object, or has no round number, is left out and named (file and line) in a warning
    and in ``problems``; a missing file is no lines."""
    from fedaudit.rundir import read_jsonl

    path = _file(path, ROUNDS_FILE)
    out = []
    for row in read_jsonl(path, problems=problems):
        if round_number(row.get("round")) is None:
            _note(problems, path, f"a line without a round number ({str(row)[:60]}); left out")
            continue
        try:
            out.append(RoundLine.from_dict(row, view_names))
        except (TypeError, ValueError) as exc:
            _note(problems, path, f"round {row.get('round')}: unreadable line ({exc}); left out")
    return out


def read_summary(path, problems: list | None = None) -> RunSummary | None:
    """``summary.json`` (``path``: the file or its run directory); None if absent or unreadable (then named in a
    warning and in ``problems``)."""
    data = _read_object(_file(path, SUMMARY_FILE), problems)
    return None if data is None else RunSummary.from_dict(data)


def write_summary(path, summary: RunSummary) -> Path:
    """Write ``summary.json`` (``path``: the file or its run directory) atomically, in this version's form."""
    return _write_object(_file(path, SUMMARY_FILE), summary.to_dict())


def update_summary(path, **fields) -> RunSummary | None:
    """Set fields of an existing ``summary.json`` (``dp=...``, ``privacy=...``) and write it back; None (nothing
    written) when there is no readable summary.json."""
    summary = read_summary(path)
    if summary is None:
        return None
    for name, value in fields.items():
        if name in _fields(RunSummary) and name != "extra":
            setattr(summary, name, value)
        else:
            summary.extra[name] = value
    write_summary(path, summary)
    return summary


def read_status(path, problems: list | None = None) -> RunStatus:
    """``status.json`` (``path``: the file or its run directory); an empty :class:`RunStatus` (``state`` None) if
    absent or unreadable (then named in a warning and in ``problems``)."""
    data = _read_object(_file(path, STATUS_FILE), problems, "; the run's state is unknown")
    return RunStatus() if data is None else RunStatus.from_dict(data)


def write_status(path, status: RunStatus) -> Path:
    """Write ``status.json`` (``path``: the file or its run directory) atomically."""
    return _write_object(_file(path, STATUS_FILE), status.to_dict())


__all__ = ["ClientResult", "DpSummary", "HEADLINE_KEYS", "InferenceSummary", "PrivacyEstimate", "ROUNDS_FILE", "RUN_STATES", "RoundLine", "RunStatus", "RunSummary",
           "SCHEMA_VERSION", "SEP", "STATUS_FILE", "SUMMARY_FILE", "read_rounds", "read_status", "read_summary",
           "round_number", "update_summary", "write_status", "write_summary", "ViewResult", "ViewSummary", "headline_of",
           "metrics_summary", "normalise_line", "parse_round_key", "round_key"]
