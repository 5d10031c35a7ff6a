"""The registry of every attack, and the interface of score attacks (arrays in, one score per record out).

Registering an attack is all it takes to use it in :func:`fedaudit.model_audit.audit`, in ``fedaudit
audit-model``, in a scenario's ``[audit] attacks`` and in the per-round auditor: config validation, the headline
choice and the auditor's dispatch all read this registry. Two kinds:

- **score attacks** (:func:`register_score_attack`): ``f(inputs: AttackInputs, **options) -> scores``, NumPy
  only. Whoever holds the models (the auditor, :func:`fedaudit.model_audit.audit`) computes logits with
  TensorFlow and passes plain arrays. ``needs`` (keys of :data:`NEEDS`) says which inputs it reads, and with
  it where the auditor can run it: nothing beyond the target's logits (per model), ``population`` (fitted on
  known non-members: the auditor cross-fits it by fold), ``reference*`` (reference models, per round with
  ``[audit] reference_models >= 2``), ``null`` (models that did not train on the record: the other clients of a
  round under ``server``, the offline reference models in a single-model audit);
- **trained attacks** (:func:`register_trained_attack`): a classifier fitted on the adversary's known members
  and non-members over the auditor's per-record features (:mod:`fedaudit.auditor.features`), cross-fitted by
  whoever runs it (:mod:`fedaudit.auditor.attack`).

Every entry carries a headline ``rank`` (lower ranks first: the round's and the audit's headline is the
best-ranked attack that ran), the threat-model ``views`` it runs in, and ``per_round`` (False: single-model
audits only). The metadata is importable without TensorFlow (config validation reads it); implementations
import what they need when they run. Attacks outside this package register themselves when their module is
imported; a module listed under the ``fedaudit.attacks`` entry-point group is imported with the built-in ones
(so that it is registered in every process, Ray workers included).

Score-attack keyword parameters are its options, and :func:`run_score_attack` rejects others with a message
listing them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fedaudit.errors import AttackError
from fedaudit.attacks.scores import check_logits

# What each kind of input means, for error messages.
NEEDS = {
    "population": "population records scored by the target (population_logits, population_labels)",
    "reference": "reference models' logits on the audited records (reference_logits)",
    "reference_out": "reference models that did not train on the audited records (reference_logits with "
                     "reference_in False for some models per record, or reference_in omitted)",
    "reference_in": "reference models that trained on the audited records (reference_in, True for some "
                    "models per record: train them with include= the audited records)",
    "reference_population": "reference models' logits on the population records (reference_population_logits)",
    "features": "the records' own inputs as feature rows (features, and population_features with population)",
    "null": "per record, its logit-scaled confidence phi under models that did not train on it (null_phi: the "
            "other clients' models of a federated round, or offline reference models)",
}
#: the threat models of the per-round auditor (config.THREAT_MODELS)
VIEWS = ("server", "participant")


@dataclass
class AttackInputs:
    """Everything a score attack may read, as arrays. Shapes: n audited records, C classes, m population
    records, R reference models.

    target_logits: (n, C) the audited model's logits on the audited records.
    labels: (n,) their labels.
    population_logits, population_labels: (m, C), (m,) the audited model on population records (records
        it did not train on).
    reference_logits: (R, n, C) reference models on the audited records.
    reference_in: (R, n) bool, True where reference model r trained on record i (online attacks need some
        True per record); None means no reference model trained on any audited record.
    reference_population_logits: (R, m, C) reference models on the population records.
    reference_population_in: (R, m) bool, True where reference model r trained on population record j
        (RMIA offline tunes its parameter a with it).
    features, population_features: (n, D), (m, D) the records' own inputs (flattened), for attacks that model
        per-record difficulty from the record itself (QMIA).
    null_phi: (M, n) the logit-scaled confidence of each audited record under M models that did not train on
        it (NaN where a record has fewer); FedMIA's null distribution.
    """

    target_logits: np.ndarray
    labels: np.ndarray
    population_logits: np.ndarray | None = None
    population_labels: np.ndarray | None = None
    reference_logits: np.ndarray | None = None
    reference_in: np.ndarray | None = None
    reference_population_logits: np.ndarray | None = None
    reference_population_in: np.ndarray | None = None
    features: np.ndarray | None = None
    population_features: np.ndarray | None = None
    null_phi: np.ndarray | None = None

    def __post_init__(self):
        self.target_logits, self.labels = check_logits(self.target_logits, self.labels, "target_logits")
        if self.target_logits.ndim != 2:
            raise AttackError(f"target_logits: expected shape (records, classes), got {self.target_logits.shape}")
        n, c = self.target_logits.shape
        if (self.population_logits is None) != (self.population_labels is None):
            raise AttackError("population_logits and population_labels: give both or neither")
        if self.population_logits is not None:
            self.population_logits, self.population_labels = check_logits(
                self.population_logits, self.population_labels, "population_logits")
            if self.population_logits.ndim != 2 or self.population_logits.shape[1] != c:
                raise AttackError(f"population_logits: expected shape (m, {c}), got {self.population_logits.shape}")
        if self.reference_logits is not None:
            self.reference_logits, _ = check_logits(self.reference_logits, self.labels, "reference_logits")
            if self.reference_logits.ndim != 3 or self.reference_logits.shape[1:] != (n, c):
                raise AttackError(
                    f"reference_logits: expected shape (R, {n}, {c}), got {self.reference_logits.shape}")
        if self.reference_in is not None:
            if self.reference_logits is None:
                raise AttackError("reference_in: given without reference_logits")
            self.reference_in = _bool_mask(self.reference_in, self.reference_logits.shape[:2], "reference_in")
        if self.reference_population_logits is not None:
            if self.population_logits is None:
                raise AttackError("reference_population_logits: given without population_logits")
            m = self.population_logits.shape[0]
            self.reference_population_logits, _ = check_logits(
                self.reference_population_logits, self.population_labels, "reference_population_logits")
            shape = self.reference_population_logits.shape
            if self.reference_logits is not None and shape[0] != self.reference_logits.shape[0]:
                raise AttackError(f"reference_population_logits: {shape[0]} models, but reference_logits has "
                                  f"{self.reference_logits.shape[0]}; both must come from the same models")
            if len(shape) != 3 or shape[1:] != (m, c):
                raise AttackError(f"reference_population_logits: expected shape (R, {m}, {c}), got {shape}")
        if self.reference_population_in is not None:
            if self.reference_population_logits is None:
                raise AttackError("reference_population_in: given without reference_population_logits")
            self.reference_population_in = _bool_mask(
                self.reference_population_in, self.reference_population_logits.shape[:2], "reference_population_in")
        if self.features is not None:
            self.features = _feature_rows(self.features, n, "features")
        if self.population_features is not None:
            if self.population_logits is None:
                raise AttackError("population_features: given without population_logits")
            self.population_features = _feature_rows(self.population_features, self.population_logits.shape[0],
                                                     "population_features")
            if self.features is not None and self.features.shape[1] != self.population_features.shape[1]:
                raise AttackError(f"population_features: {self.population_features.shape[1]} columns, but features "
                                  f"has {self.features.shape[1]}; both must describe records the same way")
        if self.null_phi is not None:
            self.null_phi = np.asarray(self.null_phi, dtype=np.float64)
            if self.null_phi.ndim != 2 or self.null_phi.shape[1] != n:
                raise AttackError(f"null_phi: expected shape (M, {n}), got {self.null_phi.shape}")
            if np.isinf(self.null_phi).any():
                raise AttackError("null_phi: must be finite or NaN (missing)")

    @property
    def n_records(self) -> int:
        return int(self.target_logits.shape[0])

    @property
    def n_reference(self) -> int:
        return 0 if self.reference_logits is None else int(self.reference_logits.shape[0])

    def in_mask(self) -> np.ndarray:
        """(R, n) bool: which reference model trained on which audited record (all False if unknown)."""
        if self.reference_logits is None:
            return np.zeros((0, self.n_records), dtype=bool)
        if self.reference_in is None:
            return np.zeros(self.reference_logits.shape[:2], dtype=bool)
        return self.reference_in

    def population_in_mask(self) -> np.ndarray | None:
        if self.reference_population_logits is None:
            return None
        if self.reference_population_in is None:
            return np.zeros(self.reference_population_logits.shape[:2], dtype=bool)
        return self.reference_population_in


def _feature_rows(x, n: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[0] != n:
        raise AttackError(f"{name}: expected {n} rows, got shape {arr.shape}")
    arr = arr.reshape(n, -1)
    if not np.isfinite(arr).all():
        raise AttackError(f"{name}: must be finite; {int((~np.isfinite(arr)).sum())} entries are not")
    return arr


def _bool_mask(mask, shape, name) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.shape != tuple(shape):
        raise AttackError(f"{name}: expected a boolean array of shape {tuple(shape)}, got {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise AttackError(f"{name}: must be boolean (or 0/1), got values other than 0 and 1")
        arr = arr.astype(bool)
    return arr


@dataclass
class AttackSpec:
    """What the registry knows of an attack besides its implementation (plain data, no TensorFlow)."""

    name: str
    needs: tuple
    description: str
    rank: int = 500              # headline rank: the best-ranked attack that ran is the headline (lower first)
    views: tuple = VIEWS         # the threat models of the per-round auditor it runs in
    per_round: bool = True       # False: single-model audits only
    kind: str = "score"          # "score" or "trained"

    @property
    def uses_reference_models(self) -> bool:
        return any(n.startswith("reference") for n in self.needs)

    @property
    def online(self) -> bool:
        return "reference_in" in self.needs

    @property
    def trained(self) -> bool:
        """Fitted on the adversary's known members and non-members (cross-fitted where it runs)."""
        return self.kind == "trained"

    @property
    def fitted(self) -> bool:
        """Fitted on known records (trained attacks on members and non-members, ``population`` attacks on
        non-members): whoever runs it scores every record with a fit that did not see it."""
        return self.trained or "population" in self.needs

    @property
    def needs_null(self) -> bool:
        return "null" in self.needs

    @property
    def offline_references(self) -> bool:
        """Needs reference models that never trained on the audited records (in a single-model audit, the
        ``null`` models are those)."""
        return (self.uses_reference_models and not self.online) or self.needs_null


@dataclass
class ScoreAttack(AttackSpec):
    fn: Callable[..., np.ndarray] = None

    @property
    def options(self) -> dict:
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return {p.name: p.default for p in params}


@dataclass
class TrainedAttack(AttackSpec):
    """A classifier on the auditor's per-record features; ``columns(feature_names)`` picks the ones it reads."""

    columns: Callable[[list], np.ndarray] = None


SCORE_ATTACKS: dict[str, ScoreAttack] = {}
TRAINED_ATTACKS: dict[str, TrainedAttack] = {}
ALIASES: dict[str, str] = {}
#: an alias (``lira``) ranks just after the attack it names
ALIAS_RANK_OFFSET = 5


def _check_new(name: str, needs, views) -> None:
    if name in SCORE_ATTACKS or name in TRAINED_ATTACKS or name in ALIASES:
        raise ValueError(f"attack {name!r} is registered twice")
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"attack {name!r}: unknown needs {unknown}; allowed: {', '.join(NEEDS)}")
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ValueError(f"attack {name!r}: views must be some of {', '.join(VIEWS)}, got {list(views)}")


def register_score_attack(name: str, needs: tuple = (), aliases: tuple = (), *, rank: int = 500,
                          views: tuple = VIEWS, per_round: bool = True):
    """Decorator: register ``f(inputs: AttackInputs, **options) -> scores`` under ``name``.

    ``needs`` lists keys of :data:`NEEDS` that :func:`run_score_attack` checks before calling ``f``; ``rank`` is
    its headline rank (lower first), ``views`` the auditor's threat models it runs in, ``per_round`` whether the
    auditor runs it every round.
    """

    def wrap(fn):
        _check_new(name, needs, views)
        doc = (inspect.getdoc(fn) or "").split("\n")[0]
        SCORE_ATTACKS[name] = ScoreAttack(name, tuple(needs), doc, int(rank), tuple(views), bool(per_round),
                                          "score", fn=fn)
        for alias in aliases:
            _check_new(alias, needs, views)
            ALIASES[alias] = name
        return fn

    return wrap


def register_trained_attack(name: str, *, rank: int = 500, views: tuple = VIEWS, description: str = ""):
    """Decorator: register a trained attack whose ``columns(feature_names) -> indices`` picks the per-record
    features its classifier is fitted on (cross-fitted logistic regression, :mod:`fedaudit.auditor.attack`)."""

    def wrap(columns):
        _check_new(name, (), views)
        doc = description or (inspect.getdoc(columns) or "").split("\n")[0]
        TRAINED_ATTACKS[name] = TrainedAttack(name, (), doc, int(rank), tuple(views), True, "trained",
                                              columns=columns)
        return columns

    return wrap


def unregister(name: str) -> None:
    """Remove an attack (and its aliases) from the registry."""
    SCORE_ATTACKS.pop(name, None)
    TRAINED_ATTACKS.pop(name, None)
    for alias in [a for a, target in ALIASES.items() if target == name or a == name]:
        del ALIASES[alias]


def attack_names() -> list:
    """Every name ``[audit] attacks`` accepts: trained attacks, then score attacks and their aliases (by rank)."""
    _load_builtin()
    names = [*TRAINED_ATTACKS, *SCORE_ATTACKS, *ALIASES]
    return sorted(names, key=lambda a: (rank_of(a), a))


def attack_spec(name: str) -> AttackSpec:
    """The registry's entry for ``name`` (an alias gives the entry of the attack it names)."""
    _load_builtin()
    if name in TRAINED_ATTACKS:
        return TRAINED_ATTACKS[name]
    if ALIASES.get(name, name) not in SCORE_ATTACKS:
        raise AttackError(f"attack: unknown attack {name!r}; allowed: {', '.join(attack_names())}")
    return resolve(name)


def rank_of(name: str) -> int:
    _load_builtin()
    if name in ALIASES:
        return SCORE_ATTACKS[ALIASES[name]].rank + ALIAS_RANK_OFFSET
    spec = TRAINED_ATTACKS.get(name) or SCORE_ATTACKS.get(name)
    return spec.rank if spec is not None else 10**9


def headline(attacks) -> str:
    """The headline among ``attacks`` (names that ran): the best-ranked one in the registry."""
    attacks = list(attacks)
    if not attacks:
        raise AttackError("headline: no attack ran")
    return min(attacks, key=lambda a: (rank_of(a), attacks.index(a)))


def resolve(name: str) -> ScoreAttack:
    """The registered attack called ``name`` (or an alias of one)."""
    _load_builtin()
    key = ALIASES.get(name, name)
    if key not in SCORE_ATTACKS:
        allowed = sorted([*SCORE_ATTACKS, *ALIASES])
        raise AttackError(f"attack: unknown score attack {name!r}; allowed: {', '.join(allowed)}")
    return SCORE_ATTACKS[key]


def missing_inputs(attack: ScoreAttack, inputs: AttackInputs) -> list[str]:
    """The needs of ``attack`` that ``inputs`` lacks (empty when it can run)."""
    missing = []
    for need in attack.needs:
        if need == "population" and inputs.population_logits is None:
            missing.append(need)
        elif need == "reference" and inputs.reference_logits is None:
            missing.append(need)
        elif need == "reference_out" and (inputs.reference_logits is None or inputs.in_mask().all(axis=0).any()):
            missing.append(need)
        elif need == "reference_in" and (inputs.reference_logits is None or not inputs.in_mask().any(axis=0).all()):
            missing.append(need)
        elif need == "reference_population" and inputs.reference_population_logits is None:
            missing.append(need)
        elif need == "features" and (inputs.features is None or (
                inputs.population_logits is not None and inputs.population_features is None)):
            missing.append(need)
        elif need == "null" and (inputs.null_phi is None or not np.isfinite(inputs.null_phi).any(axis=0).all()):
            missing.append(need)
    return missing


def run_score_attack(name: str, inputs: AttackInputs, **options) -> np.ndarray:
    """Scores of attack ``name`` on ``inputs``: shape (n,), float, higher = more likely a member."""
    attack = resolve(name)
    if not isinstance(inputs, AttackInputs):
        raise AttackError(f"inputs: expected an AttackInputs, got {type(inputs).__name__}")
    allowed = attack.options
    for key in options:
        if key not in allowed:
            raise AttackError(f"attack {name!r}: unknown option {key!r}; allowed: {', '.join(allowed) or 'none'}")
    missing = missing_inputs(attack, inputs)
    if missing:
        details = "; ".join(NEEDS[m] for m in missing)
        raise AttackError(f"attack {name!r} needs {details}")
    scores = np.asarray(attack.fn(inputs, **options), dtype=np.float64)
    if scores.shape != (inputs.n_records,):
        raise AttackError(f"attack {name!r} returned shape {scores.shape}, expected ({inputs.n_records},)")
    if np.isnan(scores).any():
        raise AttackError(f"attack {name!r} returned {int(np.isnan(scores).sum())} NaN scores")
    return scores


_LOADED = False
#: the modules of fedaudit.attacks that register the built-in attacks when imported
BUILTIN_MODULES = ("fedmia", "fitted", "lira", "population", "qmia", "reference", "rmia")


def _load_builtin() -> None:
    """Import the built-in attack modules (each registers itself)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(f"fedaudit.attacks.{module}")

    try:
        from importlib.metadata import entry_points

        plugins = list(entry_points(group="fedaudit.attacks"))
    except Exception:  # noqa: BLE001 - no metadata: no plug-ins
        plugins = []
    for ep in plugins:
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the built-in attacks
            import logging

            logging.getLogger(__name__).warning("attack plug-in %s failed to load: %r", ep.name, exc)
