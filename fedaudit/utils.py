"""ML Privacy Meter's ``ml_privacy_meter.utils`` layout: ``utils.attack_data.attack_data`` is fedaudit's data handler.

``attack_data`` here is the module :mod:`fedaudit.data.handler` (loaded on first access), whose ``attack_data``
is the handler class, so ``ml_privacy_meter.utils.attack_data.attack_data(dataset_path=..., ...)`` works after
``import fedaudit as ml_privacy_meter``.
"""

import importlib


def __getattr__(name: str):
    if name == "attack_data":
        module = importlib.import_module("fedaudit.data.handler")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "attack_data"])
