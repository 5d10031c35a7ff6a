"""The registry of inferences beyond membership, and the attack families a privacy review asks about.

An inference is a registered object with a name, the attack family it measures (one of :data:`FAMILIES`, the
families of the EDPB's Opinion 28/2024 and of NIST AI 100-2) and two methods: :meth:`Inference.run` (one round,
called with what it reads of the auditor, :class:`fedaudit.inferences.runner.InferenceInputs`, and the round's
:class:`~fedaudit.inferences.runner.InferenceRound`; returns a JSON object or None when it does
not apply) and :meth:`Inference.summarize` (the rounds' objects combined into ``summary.json``). The built-in
ones are loaded the first time the registry is read, as the attacks' and the threat models' are.

NumPy-free at import, TensorFlow-free: the scenario's validation reads the names from here.
"""

from __future__ import annotations

import importlib
from typing import ClassVar

#: modules whose import registers the built-in inferences
BUILTIN_MODULES = ("fedaudit.inferences.labels", "fedaudit.inferences.attributes",
                   "fedaudit.inferences.reconstruction")

#: the privacy-attack families of the EDPB Opinion 28/2024 and NIST AI 100-2 (2025), in the report's order:
#: (key, name, where it applies)
FAMILIES = (
    ("membership", "Membership inference", "any model trained on personal data"),
    ("attribute", "Attribute inference", "records whose other attributes an adversary holds"),
    ("property", "Property inference (a client's label mix)", "a participant's data as a whole"),
    ("reconstruction", "Data reconstruction", "updates or models that encode their training records"),
    ("extraction", "Data extraction / model inversion of generative models",
     "generative models that can emit training data verbatim"),
)

_REGISTRY: dict[str, "Inference"] = {}
_loaded = False


class Inference:
    """One inference the auditor runs per round. Class attributes describe it for the report."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    #: the key of its family in :data:`FAMILIES`
    family: ClassVar[str] = ""
    #: what it measures, one sentence
    description: ClassVar[str] = ""
    #: the inference needs the audited records' features (not only labels and ownership)
    needs_features: ClassVar[bool] = False
    #: the inference reads which clients the global model has seen by this round (``ctx.trained``)
    needs_trained: ClassVar[bool] = False

    def run(self, core, ctx) -> dict | None:
        """This round's result (a JSON object), or None when the inference does not apply to it."""
        raise NotImplementedError

    def summarize(self, rounds: list[dict]) -> dict:
        """``summary.json``'s entry from the rounds' results (``[{"round": t, **result}]``, oldest first)."""
        raise NotImplementedError

    def finding(self, metrics: dict) -> str:
        """What the run measured, one or two plain-text sentences from its ``summary.json`` entry (the report's
        "Beyond membership" table)."""
        return ""

    def __repr__(self) -> str:
        return f"<inference {self.name!r}>"


def register_inference(cls: type[Inference]) -> type[Inference]:
    """Class decorator: register an instance of ``cls`` under ``cls.name`` (a later registration replaces it)."""
    if not cls.name or not isinstance(cls.name, str):
        raise ValueError(f"{cls.__name__}: an inference needs a non-empty name")
    _REGISTRY[cls.name] = cls()
    return cls


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def inferences() -> dict[str, Inference]:
    _load_builtin()
    return dict(_REGISTRY)


def inference_names() -> list[str]:
    return list(inferences())


def get_inference(name: str) -> Inference:
    """The registered inference ``name``; KeyError naming the registered ones otherwise."""
    known = inferences()
    if name not in known:
        raise KeyError(f"unknown inference {name!r}; registered: {', '.join(known)}")
    return known[name]


def family_name(key: str) -> str:
    return next((name for k, name, _ in FAMILIES if k == key), key)




def run_round(core, ctx, names) -> dict:
    """Each named inference's result of one round ({name: object}); an inference that fails is recorded with
    its error and does not stop the others (nor the membership audit already written)."""
    import logging

    out = {}
    for name in names:
        try:
            result = get_inference(name).run(core, ctx)
        except Exception as exc:  # noqa: BLE001 - one inference's failure must not lose the round
            logging.getLogger(__name__).exception("inference %s failed in round %s", name, ctx.round)
            result = {"error": repr(exc)}
        if result is not None:
            out[name] = result
    return out


def summarize_rounds(names, lines: list[dict]) -> dict:
    """``summary.json``'s ``inferences``: each named inference's rounds (``[{"round": t, **result}]``) combined,
    with its family; an inference no round measured says so."""
    out = {}
    for name in names:
        rounds = [{"round": int(l.get("round", 0)), **l["inferences"][name]} for l in lines
                  if isinstance(l.get("inferences"), dict) and isinstance(l["inferences"].get(name), dict)
                  and "error" not in l["inferences"][name]]
        errors = [l["inferences"][name]["error"] for l in lines if isinstance(l.get("inferences"), dict)
                  and isinstance(l["inferences"].get(name), dict) and "error" in l["inferences"][name]]
        inf = get_inference(name)
        entry = {"family": inf.family, "title": inf.title, "description": inf.description}
        entry.update(inf.summarize(sorted(rounds, key=lambda r: r["round"])) if rounds
                     else {"rounds": 0, "not_measured": "no audited round produced it"})
        if errors:
            entry["errors"] = errors[-3:]
        out[name] = entry
    return out


__all__ = ["BUILTIN_MODULES", "FAMILIES", "Inference", "family_name", "get_inference", "inference_names",
           "inferences", "register_inference", "run_round", "summarize_rounds"]
