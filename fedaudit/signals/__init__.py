"""Per-example signals of a Keras model: logits, loss, layer outputs, kernel gradients, gradient norms.

``extract(model, x, y, layers=..., gradients=...)`` computes them in one vectorised pass per chunk;
see :mod:`fedaudit.signals.extract` for how, and :mod:`fedaudit.signals.layers` for how layers are counted.
"""

from fedaudit.signals.extract import DenseFactors, Signals, check_model, check_records, extract
from fedaudit.signals.layers import LayerRef, kernel_layers, kernel_of, resolve_gradient_layers, resolve_output_layers

__all__ = ["extract", "Signals", "DenseFactors", "check_model", "check_records", "LayerRef", "kernel_layers",
           "kernel_of", "resolve_gradient_layers", "resolve_output_layers"]
