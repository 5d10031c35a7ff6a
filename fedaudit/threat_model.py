"""Threat models: who the adversary is, what it observes each round, and how the report names it.

A threat model is one registered object. The per-round auditor (:mod:`fedaudit.auditor.core`) asks each audited
threat model for the jobs of a round and for its result, the aggregation across rounds
(:mod:`fedaudit.auditor.aggregate`) reads how its results combine, and the report and the scenario comparison
take its title and descriptions from here. Adding a threat model is one module that subclasses
:class:`ThreatModel` and decorates it with :func:`register_threat_model`; the built-in ones
(:mod:`fedaudit.auditor.views`) are loaded the first time the registry is read.

This module imports nothing of fedaudit (the scenario's validation reads the names from it)::

    python -c "from fedaudit.threat_model import threat_models; print(list(threat_models()))"
"""

from __future__ import annotations

import importlib
from typing import ClassVar

#: modules whose import registers the built-in threat models
BUILTIN_MODULES = ("fedaudit.auditor.views", "fedaudit.auditor.active_views")

_REGISTRY: dict[str, "ThreatModel"] = {}
_loaded = False


class ThreatModel:
    """One adversary of the federated audit.

    Class attributes describe it (for the scenario's validation, the aggregation and the report); the methods
    :meth:`jobs` and :meth:`audit` are its per-round work, called by the auditor's core with itself as ``core``
    (see :mod:`fedaudit.auditor.views` for what a round context holds).
    """

    name: ClassVar[str] = ""
    #: a heading: "Honest-but-curious server"
    title: ClassVar[str] = ""
    #: who the adversary is, after "the adversary is ...": "the aggregator, who sees ..."
    description: ClassVar[str] = ""
    #: the adversary as the subject of a sentence: "the honest-but-curious server"
    noun: ClassVar[str] = ""
    #: "the honest-but-curious server's"
    possessive: ClassVar[str] = ""
    #: "Against the server"
    against: ClassVar[str] = ""
    #: plot colour
    color: ClassVar[str] = "#555555"
    #: the report's order, and which view's probabilities become a record's ``risk``: the audited threat model with
    #: the highest strength (the one that sees the most)
    strength: ClassVar[int] = 0
    #: each client's own model is observed (per-client metrics against the population under that client's models,
    #: source inference); otherwise the view observes global models and its per-client metrics use the global ones
    per_client_models: ClassVar[bool] = False
    #: the attack registry's view whose attacks this threat model runs (its own name by default)
    attack_view: ClassVar[str | None] = None
    #: who the adversary is under secure aggregation, where that changes what it observes (None: unchanged)
    secure_aggregation_description: ClassVar[str | None] = None
    #: whether the DP guarantee of the scenario's mode covers this adversary ({dp mode: True/False})
    dp_covers: ClassVar[dict] = {}
    #: the adversary deviates from the protocol: it changes what is trained, so it runs as a federation of its own
    #: beside the passive run of the same seed (:mod:`fedaudit.twins`), whose ``passive_twin`` it is compared with
    deviation: ClassVar[bool] = False
    passive_twin: ClassVar[str | None] = None

    def attack_view_for(self, secure_aggregation: bool = False) -> str:
        """The attack registry's view whose attacks this threat model runs (in a run with or without secure
        aggregation)."""
        return self.attack_view or self.name

    def describe(self, secure_aggregation: bool = False) -> str:
        """Who the adversary is, in this run."""
        if secure_aggregation and self.secure_aggregation_description:
            return self.secure_aggregation_description
        return self.description

    # ---- per-round work (the auditor's core calls these) ------------------------------------------------

    def scored_records(self, core):
        """A mask of the audited records this view's metrics are computed on (None: every record it scores; its
        attacks are fitted on every known record either way). An active adversary's are its target records."""
        return None

    def jobs(self, core, ctx) -> list:
        """``[(Job, weights)]``: the models whose signals this view needs this round (see
        :class:`fedaudit.auditor.shard.Job`); jobs of the same key are computed once for every view."""
        raise NotImplementedError

    def audit(self, core, ctx) -> dict:
        """The view's result of the round (a :class:`fedaudit.schema.ViewResult` as a dict), with its arrays
        added to ``ctx.arrays`` under :func:`fedaudit.schema.round_key` keys."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<threat model {self.name!r}>"


def register_threat_model(cls: type[ThreatModel]) -> type[ThreatModel]:
    """Class decorator: register an instance of ``cls`` under ``cls.name`` (a later registration replaces it)."""
    if not cls.name or not isinstance(cls.name, str):
        raise ValueError(f"{cls.__name__}: a threat model needs a non-empty name")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_threat_model(name: str) -> None:
    """Remove a registered threat model (tests that register their own)."""
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def threat_models() -> dict[str, ThreatModel]:
    """The registered threat models by name, strongest first."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (-kv[1].strength, kv[0])))


def threat_model_names() -> list[str]:
    return list(threat_models())


def get_threat_model(name: str) -> ThreatModel:
    """The registered threat model ``name``; KeyError naming the registered ones otherwise."""
    models = threat_models()
    if name not in models:
        raise KeyError(f"unknown threat model {name!r}; registered: {', '.join(models)}")
    return models[name]


def ordered(names) -> list[str]:
    """``names`` in the registry's order (strongest first), unregistered names last, alphabetically."""
    models = threat_models()
    names = set(names)
    known = [n for n in models if n in names]
    return known + sorted(names - set(known))


def strongest(names) -> str | None:
    """The strongest registered threat model among ``names`` (the one whose view becomes the record's risk)."""
    known = [n for n in ordered(names) if n in threat_models()]
    return known[0] if known else None


__all__ = ["ThreatModel", "get_threat_model", "ordered", "register_threat_model", "strongest", "threat_model_names",
           "threat_models", "unregister_threat_model"]
