"""The former import path of :mod:`fedaudit.attacks.nasr`, the attack network of Nasr et al. (2019).

``whitebox`` in ``[audit] attacks`` and ``--attacks`` is the logistic attack of :mod:`fedaudit.attacks.fitted`;
the network attack lives in :mod:`fedaudit.attacks.nasr`. This module gives code that imports
``fedaudit.attacks.whitebox`` (and its submodules) the same objects.
"""

import importlib
import sys

from fedaudit.attacks import nasr

__all__ = list(nasr.__all__)
globals().update({name: getattr(nasr, name) for name in __all__})

#: the submodules of fedaudit.attacks.nasr, importable under this module's name too
SUBMODULES = ("api", "features", "network", "preprocess", "stacking", "training")

for _name in SUBMODULES:
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"fedaudit.attacks.nasr.{_name}")
