"""Dense layers: the per-example kernel gradient is the outer product of the input and the output gradient.

For an input ``a`` of rank 2 the gradient of example i is ``outer(a[i], d[i])`` with ``d`` the gradient of the
loss at the pre-activation output, so the step returns the two factors only and the norm is ``|a| |d|``; for
inputs of higher rank (a Dense applied along the last axis) it sums the outer products over the other axes.
The NumPy half (:data:`fedaudit.signals.numpy_rules.DENSE`) runs the same layer for many models at once.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from fedaudit.signals import numpy_rules
from fedaudit.signals.rules.registry import LayerRule, flat_norms, register


def activate(layer, z):
    """The layer's activation applied to its pre-activation output ``z``."""
    return layer.activation(z) if layer.activation is not None else z


@register(keras.layers.Dense)
class DenseRule(LayerRule):
    name = "dense"
    numpy = numpy_rules.DENSE

    def applies(self, layer) -> bool:
        return (type(layer).call is keras.layers.Dense.call
                and getattr(layer, "quantization_mode", None) is None)

    def weight(self, layer):
        return layer.kernel

    def forward(self, layer, inputs, *args, **kwargs):
        z = tf.matmul(inputs, layer.kernel) if inputs.shape.rank == 2 else \
            tf.tensordot(inputs, layer.kernel, axes=[[inputs.shape.rank - 1], [0]])
        if layer.bias is not None:
            z = z + layer.bias
        return inputs, z, activate(layer, z)

    def factors(self, layer, saved, dz):
        return (saved, dz) if saved.shape.rank == 2 else None

    def gradients(self, layer, saved, dz):
        factors = self.factors(layer, saved, dz)
        if factors is not None:
            return tf.einsum("bi,bo->bio", *factors)
        batch = tf.shape(saved)[0]
        a2 = tf.reshape(saved, [batch, -1, saved.shape[-1]])
        d2 = tf.reshape(dz, [batch, -1, dz.shape[-1]])
        return tf.einsum("bti,bto->bio", a2, d2)

    def norms(self, layer, saved, dz, grads=None):
        if saved.shape.rank == 2:  # |a (x) d| = |a| |d|
            return tf.norm(saved, axis=1) * tf.norm(dz, axis=1)
        return flat_norms(self.gradients(layer, saved, dz) if grads is None else grads)

    def floats_per_example(self, layer) -> int:
        return int(sum(layer.kernel.shape))  # factors in the graph; full gradients are written in NumPy
