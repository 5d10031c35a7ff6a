"""Keras model builders (a registry) and the compiled training step.

The registry imports no TensorFlow (a model name and its options are checked before TensorFlow starts);
:class:`Trainer`, :func:`train_model` and :func:`make_optimizer` load :mod:`fedaudit.models.training`, which
imports it, on first access.
"""

from fedaudit.models.registry import MODELS, build_model, check_model, register_model

_TRAINING = ("Trainer", "FitResult", "make_optimizer", "train_model")

__all__ = ["MODELS", "build_model", "check_model", "register_model", *_TRAINING]


def __getattr__(name: str):
    if name in _TRAINING:
        from fedaudit.models import training

        value = getattr(training, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_TRAINING})
