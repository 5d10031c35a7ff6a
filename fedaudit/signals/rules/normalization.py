"""Normalisation layers (BatchNormalization in inference mode, LayerNormalization): per-example scale gradients.

The layer computes ``gamma * x_hat + beta`` with ``x_hat`` the input normalised (by the moving statistics for
BatchNormalization in inference mode, by the example's own statistics over ``axis`` for LayerNormalization), so
the gradient of example i is ``sum d[i] * x_hat[i]`` for ``gamma`` and ``sum d[i]`` for ``beta``, summed over the
axes that the weight does not span. The chosen weight is ``gamma``, or ``beta`` for a layer without a scale.
The step calls the layer itself for its output and recomputes ``x_hat`` for the gradient.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from fedaudit.signals.keras_private import takes_training_argument
from fedaudit.signals.rules.registry import LayerRule, register


class _NormalizationRule(LayerRule):
    """What BatchNormalization and LayerNormalization share; subclasses say how ``x_hat`` and the axes are
    found."""

    base: type = keras.layers.Layer

    def applies(self, layer) -> bool:
        return type(layer).call is self.base.call and self.weight(layer) is not None

    def weight(self, layer):
        if getattr(layer, "scale", False) and getattr(layer, "gamma", None) is not None:
            return layer.gamma
        if getattr(layer, "center", False) and getattr(layer, "beta", None) is not None:
            return layer.beta
        return None

    def axes(self, layer, rank: int) -> list:
        """The input axes the weights span (positive)."""
        raise NotImplementedError

    def normalized(self, layer, x):
        raise NotImplementedError

    def forward(self, layer, inputs, *args, **kwargs):
        if takes_training_argument(layer):
            kwargs.setdefault("training", False)
        out = layer(inputs, *args, **kwargs)
        x = tf.cast(inputs, tf.float32)
        return (self.normalized(layer, x) if self.weight(layer) is getattr(layer, "gamma", None) else x), out, out

    def gradients(self, layer, saved, dz):
        rank = saved.shape.rank
        keep = self.axes(layer, rank)
        summed = [i for i in range(1, rank) if i not in keep]
        dz = tf.cast(dz, tf.float32)
        terms = dz * saved if self.weight(layer) is getattr(layer, "gamma", None) else dz
        grads = tf.reduce_sum(terms, axis=summed) if summed else terms
        return tf.reshape(grads, [tf.shape(grads)[0], *self.weight(layer).shape])

    def floats_per_example(self, layer) -> int:
        shape = layer.input.shape[1:] if hasattr(layer, "input") else self.weight(layer).shape
        return 2 * int(np.prod([d or 1 for d in shape]))


@register(keras.layers.BatchNormalization)
class BatchNormalizationRule(_NormalizationRule):
    name = "batchnorm"
    base = keras.layers.BatchNormalization

    def axes(self, layer, rank: int) -> list:
        return [layer.axis % rank]

    def normalized(self, layer, x):
        rank = x.shape.rank
        shape = [1] * rank
        shape[layer.axis % rank] = -1
        mean = tf.reshape(tf.cast(layer.moving_mean, x.dtype), shape)
        variance = tf.reshape(tf.cast(layer.moving_variance, x.dtype), shape)
        return (x - mean) * tf.math.rsqrt(variance + layer.epsilon)


@register(keras.layers.LayerNormalization)
class LayerNormalizationRule(_NormalizationRule):
    name = "layernorm"
    base = keras.layers.LayerNormalization

    def applies(self, layer) -> bool:
        return not getattr(layer, "rms_scaling", False) and super().applies(layer)

    def axes(self, layer, rank: int) -> list:
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        return sorted(a % rank for a in axis)

    def normalized(self, layer, x):
        axes = self.axes(layer, x.shape.rank)
        mean, variance = tf.nn.moments(x, axes=axes, keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + layer.epsilon)
