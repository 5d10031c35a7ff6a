"""Embedding layers: the per-example gradient of the embedding matrix scatters the output gradient into rows.

Example i looks up rows ``ids[i]``; the gradient of its loss with respect to the matrix is zero except in those
rows, where it is the sum of the output gradients ``d[i, t]`` of the positions t that looked the row up. The
step calls the layer itself (so a ``mask_zero`` mask reaches the layers after it) and records the ids.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from fedaudit.signals.rules.registry import LayerRule, register


@register(keras.layers.Embedding)
class EmbeddingRule(LayerRule):
    name = "embedding"

    def applies(self, layer) -> bool:
        return (type(layer).call is keras.layers.Embedding.call
                and getattr(layer, "quantization_mode", None) is None
                and not getattr(layer, "lora_enabled", False))

    def weight(self, layer):
        return layer.embeddings

    def forward(self, layer, inputs, *args, **kwargs):
        out = layer(inputs, *args, **kwargs)
        return tf.cast(inputs, tf.int32), out, out

    def gradients(self, layer, saved, dz):
        vocab, dim = (int(d) for d in layer.embeddings.shape)
        batch = tf.shape(saved)[0]
        ids = tf.reshape(saved, [batch, -1])                          # (n, positions)
        rows = ids + vocab * tf.range(batch)[:, tf.newaxis]           # example i's rows: i * vocab + id
        d = tf.reshape(tf.cast(dz, layer.embeddings.dtype), [-1, dim])
        grads = tf.math.unsorted_segment_sum(d, tf.reshape(rows, [-1]), batch * vocab)
        return tf.reshape(grads, [batch, vocab, dim])

    def floats_per_example(self, layer) -> int:
        return 2 * super().floats_per_example(layer)
