"""fedaudit: membership-inference risk audits for federated learning.

Importing ``fedaudit`` imports neither TensorFlow nor Ray. Its subpackages are attributes loaded on first
access (PEP 562), so ``fedaudit.model_audit.audit`` (one trained Keras model),
``fedaudit.attacks.meminf.initialize`` and ``fedaudit.data.attack_data`` work after a bare ``import fedaudit``.
A script written for ML Privacy Meter (2021) runs after ``import fedaudit as ml_privacy_meter``:
``ml_privacy_meter.utils.attack_data.attack_data`` and ``ml_privacy_meter.attack.meminf.initialize`` are the same
objects (``attack`` is ``attacks``).
"""

import importlib

__version__ = "0.1.0"

#: subpackages and modules loaded on first attribute access
SUBMODULES = ("attacks", "auditor", "config", "data", "dp", "errors", "federation", "flower", "metrics",
              "model_audit", "models", "plots", "report", "run", "rundir", "scalars", "signals", "slices", "suite",
              "utils")
#: ML Privacy Meter's names for the same modules
ALIASES = {"attack": "attacks"}


def __getattr__(name: str):
    target = ALIASES.get(name, name)
    if target in SUBMODULES:
        module = importlib.import_module(f"{__name__}.{target}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *SUBMODULES, *ALIASES})
