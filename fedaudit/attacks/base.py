"""The interface of score attacks: arrays in, one score per record out (higher = more likely a member).

Score attacks are NumPy only. Whoever holds the models (the auditor, :func:`fedaudit.attacks.audit_model`)
computes logits with TensorFlow and passes plain arrays in an :class:`AttackInputs`. An attack is a
function ``f(inputs, **options) -> scores`` registered with :func:`register_score_attack`; its keyword
parameters are its options, and :func:`run_score_attack` rejects others with a message listing them.
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
}


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
    """

    target_logits: np.ndarray
    labels: np.ndarray
    population_logits: np.ndarray | None = None
    population_labels: np.ndarray | None = None
    reference_logits: np.ndarray | None = None
    reference_in: np.ndarray | None = None
    reference_population_logits: np.ndarray | None = None
    reference_population_in: np.ndarray | None = None

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
class ScoreAttack:
    name: str
    fn: Callable[..., np.ndarray]
    needs: tuple
    description: str

    @property
    def options(self) -> dict:
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return {p.name: p.default for p in params}

    @property
    def uses_reference_models(self) -> bool:
        return any(n.startswith("reference") for n in self.needs)

    @property
    def online(self) -> bool:
        return "reference_in" in self.needs


SCORE_ATTACKS: dict[str, ScoreAttack] = {}
ALIASES: dict[str, str] = {}


def register_score_attack(name: str, needs: tuple = (), aliases: tuple = ()):
    """Decorator: register ``f(inputs: AttackInputs, **options) -> scores`` under ``name``.

    ``needs`` lists keys of :data:`NEEDS` that :func:`run_score_attack` checks before calling ``f``.
    """

    def wrap(fn):
        if name in SCORE_ATTACKS:
            raise ValueError(f"score attack {name!r} is registered twice")
        unknown = [n for n in needs if n not in NEEDS]
        if unknown:
            raise ValueError(f"score attack {name!r}: unknown needs {unknown}; allowed: {', '.join(NEEDS)}")
        doc = (inspect.getdoc(fn) or "").split("\n")[0]
        SCORE_ATTACKS[name] = ScoreAttack(name, fn, tuple(needs), doc)
        for alias in aliases:
            ALIASES[alias] = name
        return fn

    return wrap


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


def _load_builtin() -> None:
    """Import the built-in attack modules (each registers itself)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from fedaudit.attacks import lira, population, reference, rmia  # noqa: F401
