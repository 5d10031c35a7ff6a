"""Convolutions (Conv1D/Conv2D, channels last, groups 1): the per-example kernel gradient from input patches.

The gradient of example i is ``patches[i]^T d[i]``: the input's patches at every output position (ordered as the
kernel is) times the gradient ``d`` at the pre-activation output, one batched matmul per chunk. Its norm alone
is ``sqrt(sum((P P^T) * (D D^T)))`` over the T output positions (the Gram matrices of the patches and of ``d``,
"ghost" norms), which costs T^2 (K + O) rather than T K O for K patch values and O filters: taken when that is
smaller (late, small feature maps), without materialising the gradient. Other
convolutions (Conv3D, channels first, grouped, depthwise, separable, transposed) take the generic rule, and so
does a subclass with its own ``call`` (Keras's Conv1D has one, for causal padding; the rank-1 patches serve a
Conv1D that keeps BaseConv's).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from fedaudit.signals.keras_private import BaseConv
from fedaudit.signals.rules.dense import activate
from fedaudit.signals.rules.registry import LayerRule, flat_norms, register


@register(BaseConv)
class ConvRule(LayerRule):
    name = "conv"

    def applies(self, layer) -> bool:
        return (type(layer).call is BaseConv.call and type(layer).convolution_op is BaseConv.convolution_op
                and layer.rank in (1, 2) and layer.data_format == "channels_last"
                and getattr(layer, "groups", 1) == 1)

    def weight(self, layer):
        return layer.kernel

    def forward(self, layer, inputs, *args, **kwargs):
        z = layer.convolution_op(inputs, layer.kernel)
        if layer.use_bias:
            z = z + layer.bias
        return inputs, z, activate(layer, z)

    def gradients(self, layer, saved, dz):
        p = patches(layer, saved)
        d2 = tf.reshape(dz, [tf.shape(dz)[0], -1, dz.shape[-1]])
        grad = tf.einsum("bpk,bpo->bko", p, d2)
        return tf.reshape(grad, [tf.shape(grad)[0], *layer.kernel.shape])

    def norms(self, layer, saved, dz, grads=None):
        spatial = dz.shape[1:-1]
        positions = int(np.prod(spatial)) if None not in spatial else None
        if grads is not None or not ghost_norms_cheaper(positions, int(np.prod(layer.kernel.shape[:-1])),
                                                        int(layer.kernel.shape[-1])):
            return flat_norms(self.gradients(layer, saved, dz) if grads is None else grads)
        p = patches(layer, saved)
        d2 = tf.reshape(dz, [tf.shape(dz)[0], -1, dz.shape[-1]])
        gram_p = tf.einsum("btk,bsk->bts", p, p)
        gram_d = tf.einsum("bto,bso->bts", d2, d2)
        return tf.sqrt(tf.maximum(tf.reduce_sum(gram_p * gram_d, axis=[1, 2]), 0.0))

    def floats_per_example(self, layer) -> int:
        size = int(np.prod(layer.kernel.shape))
        out_shape = layer.output.shape[1:-1] if hasattr(layer, "output") else (1,)
        positions = int(np.prod([d or 1 for d in out_shape]))
        return size + positions * int(np.prod(layer.kernel.shape[:-1]))


def ghost_norms_cheaper(positions, size, filters) -> bool:
    """Whether the Gram matrices of T = ``positions`` output positions cost less than the gradient itself
    (T^2 (K + O) against T K O multiplications for K = ``size`` patch values and O = ``filters``)."""
    return positions is not None and positions * (size + filters) < size * filters


def patches(layer, a):
    """Input patches (batch, positions, kh*kw*c_in), ordered as the kernel, at the conv's output positions.

    Built from kh*kw strided slices of the (padded) input, which is several times faster on CPU than
    ``tf.image.extract_patches`` (used only when the spatial size is not known when tracing).
    """
    if layer.rank == 1:
        a = a[:, tf.newaxis]  # (B, 1, L, C)
        (k,), (s,), (r,) = layer.kernel_size, layer.strides, layer.dilation_rate
        (kh, kw), (sh, sw), (rh, rw) = (1, k), (1, s), (1, r)
        padding = layer.padding
        if padding == "causal":
            a = tf.pad(a, [[0, 0], [0, 0], [(k - 1) * r, 0], [0, 0]])
            padding = "valid"
    else:
        (kh, kw), (sh, sw), (rh, rw) = layer.kernel_size, layer.strides, layer.dilation_rate
        padding = layer.padding
    height, width, channels = a.shape[1], a.shape[2], a.shape[3]
    if height is None or width is None:
        p = tf.image.extract_patches(a, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, rh, rw, 1],
                                     padding=padding.upper())
        return tf.reshape(p, [tf.shape(p)[0], -1, p.shape[-1]])
    span_h, span_w = (kh - 1) * rh + 1, (kw - 1) * rw + 1
    if padding == "same":
        out_h, out_w = -(-height // sh), -(-width // sw)
        pad_h = max((out_h - 1) * sh + span_h - height, 0)
        pad_w = max((out_w - 1) * sw + span_w - width, 0)
        a = tf.pad(a, [[0, 0], [pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]])
    else:
        out_h, out_w = (height - span_h) // sh + 1, (width - span_w) // sw + 1
    slices = [a[:, i * rh: i * rh + (out_h - 1) * sh + 1: sh, j * rw: j * rw + (out_w - 1) * sw + 1: sw, :]
              for i in range(kh) for j in range(kw)]
    p = tf.stack(slices, axis=3)  # (B, out_h, out_w, kh*kw, c_in)
    return tf.reshape(p, [tf.shape(p)[0], out_h * out_w, kh * kw * channels])
