"""Every Keras internal fedaudit relies on, in one place.

The signal extractor runs a model's graph with hooks on chosen layers and computes convolutions' per-example
gradients itself; Keras 3 has no public API for either, so it uses these internals:

- ``keras.src.layers.convolutional.base_conv.BaseConv``: the base of Conv1D/Conv2D/Conv3D, with
  ``convolution_op`` (the convolution without bias and activation);
- ``keras.src.models.functional.Functional`` and its ``_run_through_graph(inputs, operation_fn=...)``, which runs
  the graph calling ``operation_fn(op)`` in place of each operation; a Sequential model keeps its graph in
  ``_functional``;
- ``Layer._call_has_training_arg`` and ``Layer._call_context_args``: whether a layer's ``call`` takes
  ``training``.

pyproject.toml bounds Keras to the versions these were checked with; tests/test_keras_private.py fails, naming
the internal, when a Keras release moves or changes one of them.
"""

from __future__ import annotations

import keras

try:
    from keras.src.layers.convolutional.base_conv import BaseConv
    from keras.src.models.functional import Functional
except ImportError as exc:  # pragma: no cover - only with an untested Keras
    raise ImportError(f"fedaudit needs Keras internals that Keras {keras.__version__} does not have ({exc}); "
                      "install the Keras version pyproject.toml names") from exc

__all__ = ["BaseConv", "Functional", "functional_graph", "run_through_graph", "takes_training_argument"]


def functional_graph(model) -> Functional | None:
    """The functional graph of a model: the model itself when it is functional, a built Sequential's
    ``_functional``, else None (a subclassed model, or a Sequential without an input shape)."""
    if isinstance(model, Functional) and not isinstance(model, keras.Sequential):
        return model
    return getattr(model, "_functional", None)


def run_through_graph(functional: Functional, inputs, operation_fn):
    """Run ``functional`` on ``inputs``, calling ``operation_fn(op)(*args, **kwargs)`` for each operation."""
    return functional._run_through_graph(inputs, operation_fn=operation_fn)


def takes_training_argument(op) -> bool:
    """Whether ``op.call`` takes a ``training`` argument (Dropout, BatchNormalization, models, ...)."""
    return bool(getattr(op, "_call_has_training_arg", False)) or "training" in getattr(op, "_call_context_args", ())
