"""The NumPy halves of the layer rules: a layer's forward and backward pass and its per-example gradient
factors, for a stack of B models at once, without TensorFlow.

The auditor's NumPy path (:mod:`fedaudit.auditor.dense`) runs a model as a chain of layers; for each layer it
asks the NumPy half named by the layer's description (``spec.rule``) for the pre-activation ``z`` and output of
its input, then, backwards, for the gradient at ``z`` from the gradient at the output and the gradient at the
input from the gradient at ``z``. Weights come stacked, one array per weight index of ``get_weights()``, each
(B, ...); a layer's description (``spec``) names its weight indices. A TensorFlow rule
(:mod:`fedaudit.signals.rules`) that has a NumPy half points to it in its ``numpy`` attribute.

This module imports NumPy only, so the auditor's processes can run it without TensorFlow.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: activations the NumPy halves compute
ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear")

_HALVES: dict = {}


def activate(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 0.5 * (np.tanh(0.5 * z) + 1.0)
    return z


def activation_grad(name: str, z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The derivative of the activation at ``z`` (``out`` is its value there)."""
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "tanh":
        return 1.0 - out * out
    if name == "sigmoid":
        return out * (1.0 - out)
    return np.ones_like(z)


class NumpyRule:
    """One layer type in NumPy; ``spec`` is the layer's plain-data description (it has ``kernel``, ``bias``
    weight indices and the fields :meth:`describe` returned)."""

    name = "rule"

    def describe(self, layer) -> dict | None:
        """Plain-data fields of a Keras ``layer`` (called where the model exists), or None when this half
        cannot run it."""
        raise NotImplementedError

    def forward(self, spec, stacked: list, a: np.ndarray):
        """``(z, out)``: the pre-activation output and the output of input ``a`` ((m, in) shared, or (B, m, in))."""
        raise NotImplementedError

    def preactivation_grad(self, spec, z: np.ndarray, out: np.ndarray, d_out: np.ndarray) -> np.ndarray:
        """The gradient at ``z`` from the gradient at the output (may scale ``d_out`` in place)."""
        raise NotImplementedError

    def input_grad(self, spec, stacked: list, dz: np.ndarray) -> np.ndarray:
        """The gradient at the layer's input from the gradient at ``z``."""
        raise NotImplementedError

    def factors(self, a: np.ndarray, dz: np.ndarray) -> tuple:
        """Two arrays whose per-example outer product is the kernel gradient."""
        raise NotImplementedError

    def norms(self, a: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """Per-example norms of the kernel gradient, (B, m)."""
        raise NotImplementedError


def register_numpy(rule: NumpyRule) -> NumpyRule:
    """File a NumPy half under its name."""
    if rule.name in _HALVES:
        logger.debug("NumPy half %r replaced", rule.name)
    _HALVES[rule.name] = rule
    return rule


def numpy_rule(name: str) -> NumpyRule:
    """The NumPy half filed under ``name``."""
    try:
        return _HALVES[name]
    except KeyError:
        raise KeyError(f"no NumPy half named {name!r}; known: {', '.join(sorted(_HALVES))}") from None


class DenseNumpy(NumpyRule):
    """A Dense layer on inputs of rank 2 with ReLU, tanh, sigmoid or no activation: ``z = a K + b``; the
    per-example kernel gradient is ``outer(a, dz)``, its norm ``|a| |dz|``."""

    name = "dense"

    def describe(self, layer) -> dict | None:
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        if activation not in ACTIVATIONS or len(layer.input.shape) != 2:
            return None
        return {"activation": activation, "width": int(layer.kernel.shape[1])}

    def forward(self, spec, stacked, a):
        z = np.matmul(a, stacked[spec.kernel])
        if spec.bias is not None:
            z += stacked[spec.bias][:, None, :]
        return z, activate(spec.activation, z)

    def preactivation_grad(self, spec, z, out, d_out):
        d_out *= activation_grad(spec.activation, z, out)
        return d_out

    def input_grad(self, spec, stacked, dz):
        return np.matmul(dz, np.swapaxes(stacked[spec.kernel], 1, 2))

    def factors(self, a, dz):
        return a, dz

    def norms(self, a, dz):
        return np.broadcast_to(np.linalg.norm(a, axis=-1), dz.shape[:-1]) * np.linalg.norm(dz, axis=-1)


DENSE = register_numpy(DenseNumpy())

__all__ = ["ACTIVATIONS", "NumpyRule", "DenseNumpy", "DENSE", "register_numpy", "numpy_rule", "activate",
           "activation_grad"]
