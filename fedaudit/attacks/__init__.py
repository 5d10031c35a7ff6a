"""Membership-inference attacks.

Every attack is an entry of one registry (:mod:`fedaudit.attacks.base`: needs, views, headline rank), which
config validation, the single-model audit (:func:`fedaudit.model_audit.audit`, ``fedaudit audit-model``) and the
per-round auditor read. Score attacks (NumPy only): ``loss``, ``confidence``, ``entropy``, ``modified-entropy``,
``population`` (P), ``qmia`` (quantile regression, Bertran et al. 2023), ``reference`` (R),
``lira-offline``/``lira-online``, ``rmia-offline``/``rmia-online`` (``lira`` and ``rmia`` are the offline ones),
``fedmia`` (Zhu et al. 2024: the other clients' models as the null). Trained attacks (cross-fitted logistic
regression on the auditor's per-record features, :mod:`fedaudit.attacks.fitted`): ``whitebox`` (every feature,
gradient norms included) and ``blackbox`` (the output features). Run one with :func:`run_score_attack` on an
:class:`AttackInputs`.

Importing this package imports no TensorFlow. The attack network of Nasr et al. (2019),
:class:`~fedaudit.attacks.nasr.WhiteBoxAttack`, and the ``meminf`` module (ML Privacy Meter's API for it) are
loaded on first access; :func:`audit_model` is the keyword form of :func:`fedaudit.model_audit.audit`.
"""

from fedaudit.attacks.base import (
    ALIASES, SCORE_ATTACKS, TRAINED_ATTACKS, AttackInputs, ScoreAttack, attack_names, attack_spec,
    register_score_attack, register_trained_attack, resolve, run_score_attack,
)
from fedaudit.attacks.base import _load_builtin

_load_builtin()

from fedaudit.attacks.audit import audit_model  # noqa: E402  (imports TensorFlow only when called)

__all__ = [
    "SCORE_ATTACKS", "TRAINED_ATTACKS", "ALIASES", "AttackInputs", "ScoreAttack", "attack_names", "attack_spec",
    "register_score_attack", "register_trained_attack", "resolve",
    "run_score_attack", "audit_model", "WhiteBoxAttack", "meminf",
]


def __getattr__(name: str):
    """Load the whitebox attack and the meminf module on first access (they import TensorFlow)."""
    if name == "WhiteBoxAttack":
        from fedaudit.attacks.nasr import WhiteBoxAttack

        globals()["WhiteBoxAttack"] = WhiteBoxAttack
        return WhiteBoxAttack
    if name == "meminf":
        import importlib

        module = importlib.import_module("fedaudit.attacks.meminf")
        globals()["meminf"] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "WhiteBoxAttack", "meminf"])
