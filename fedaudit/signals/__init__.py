"""Per-example signals of a Keras model: logits, loss, layer outputs, kernel gradients, gradient norms.

``extract(model, x, y, layers=..., gradients=...)`` computes them in one vectorised pass per chunk;
see :mod:`fedaudit.signals.extract` for how, :mod:`fedaudit.signals.layers` for how layers are counted and
:mod:`fedaudit.signals.rules` for how each layer type's per-example gradient is computed.

The names below load on first access (PEP 562), so that :mod:`fedaudit.signals.numpy_rules`, the NumPy halves
of the layer rules, imports without TensorFlow. ``fedaudit.signals.extract`` is the function, as it always was,
even after the submodule of the same name is loaded (the submodule is ``sys.modules["fedaudit.signals.extract"]``).
"""

import importlib
import sys
import types

#: public name -> the submodule that defines it
_EXPORTS = {"extract": "extract", "Signals": "extract", "DenseFactors": "extract", "check_model": "extract",
            "check_records": "extract", "LayerRef": "layers", "kernel_layers": "layers", "kernel_of": "layers",
            "resolve_gradient_layers": "layers", "resolve_output_layers": "layers"}

__all__ = ["extract", "Signals", "DenseFactors", "check_model", "check_records", "LayerRef", "kernel_layers",
           "kernel_of", "resolve_gradient_layers", "resolve_output_layers"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """The package's module type: loading the submodule ``extract`` does not replace the function of that name
    (the import system sets an attribute on the package for every submodule it loads)."""

    def __setattr__(self, name, value):
        if name == "extract" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
