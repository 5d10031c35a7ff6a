"""The attack network: one component per signal, concatenated into an encoder that ends in a membership logit."""

from __future__ import annotations

import keras
import tensorflow as tf

from fedaudit.attacks.nasr.features import Component
from fedaudit.attacks.nasr.preprocess import _input_shapes
from fedaudit.errors import AttackError

PAPER = {"output": (100, 64), "output_conv": (1024, 512, 128, 64), "label": (128, 64), "loss": (100, 64),
         "grad_filters": 100, "grad": (2024, 512, 256), "grad_conv": (64,), "encoder": (256, 128, 64)}
AUTO = {"output": (100, 64), "output_conv": (128, 64), "output_conv_filters": 32, "label": (128, 64),
        "loss": (100, 64), "grad_filters": 32, "grad_pool": "mean", "grad": (64,), "grad_conv": (64,),
        "encoder": (256, 128, 64)}


@keras.saving.register_keras_serializable(package="fedaudit")
class GradientRowConv(keras.layers.Layer):
    """The paper's Conv2D(filters, kernel (1, out)) over a dense kernel gradient seen as an (in, out) image.

    Filter f on row r of ``G`` gives ``sum_c G[r, c] w[c, f] + b[f]``. Called with the two factors
    ``(a, d)`` of ``G = a (x) d`` this is ``a[r] (d . w_f) + b_f``, computed without forming ``G``;
    called with a full gradient ``G`` it is the convolution itself. Output: (batch, in, filters), ReLU;
    with ``pool="mean"`` (or ``"max"``) the responses pooled over the rows, (batch, filters).
    """

    def __init__(self, out_dim: int, filters: int, seed: int = 0, pool: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.out_dim, self.filters, self.seed, self.pool = int(out_dim), int(filters), int(seed), pool
        self.w = self.add_weight(shape=(self.out_dim, self.filters), name="kernel",
                                 initializer=keras.initializers.RandomNormal(stddev=0.01, seed=self.seed))
        self.b = self.add_weight(shape=(self.filters,), name="bias", initializer="zeros")

    def call(self, a, d=None):
        if d is None:   # a is the full gradient (batch, in, out)
            h = tf.einsum("bio,of->bif", a, self.w)
        else:
            h = a[:, :, None] * tf.matmul(d, self.w)[:, None, :]
        h = tf.nn.relu(h + self.b)
        if self.pool == "mean":
            return tf.reduce_mean(h, axis=1)
        if self.pool == "max":
            return tf.reduce_max(h, axis=1)
        return h

    def get_config(self):
        return {**super().get_config(), "out_dim": self.out_dim, "filters": self.filters, "seed": self.seed,
                "pool": self.pool}


class _Init:
    """Seeded N(0, 0.01) initialisers and dropout seeds, one per layer."""

    def __init__(self, seed: int):
        self.seed, self.count = int(seed), 0

    def next(self) -> int:
        self.count += 1
        return self.seed * 1009 + self.count

    def normal(self):
        return keras.initializers.RandomNormal(stddev=0.01, seed=self.next())

    def dense(self, units, activation="relu", name=None):
        return keras.layers.Dense(units, activation=activation, kernel_initializer=self.normal(),
                                  bias_initializer="zeros", name=name)

    def dropout(self, rate=0.2):
        return keras.layers.Dropout(rate, seed=self.next())


def _stack(h, widths, init: _Init):
    for w in widths:
        h = init.dense(w)(h)
    return h


def network_widths(components: list[Component], size="auto") -> dict:
    """The layer widths :func:`build_attack_network` uses (``size``: 'auto', 'paper' or a dict)."""
    if isinstance(size, dict):
        return {**AUTO, **size}
    if size == "paper":
        return dict(PAPER)
    if size == "auto":
        return dict(AUTO)
    raise AttackError(f"size: unknown attack network size {size!r}; allowed: 'auto', 'paper' or a dict of widths")


def build_attack_network(components: list[Component], *, seed: int = 0, size="auto") -> keras.Model:
    """The attack network for ``components``: inputs in :class:`Preprocessor` order, output one logit
    (the membership probability is its sigmoid).

    Components (widths for ``size="paper"``, ML Privacy Meter's 2021 ones; ``"auto"`` in brackets where
    it differs): dense layer output: FC 100 -> 64; conv layer output: Conv2D (channels filters [at most
    32], kernel = feature map) -> flatten -> dropout 0.2 -> FC 1024 -> 512 -> 128 -> 64 [128 -> 64];
    label: FC 128 -> 64; loss (loss, log-loss): FC 100 -> 64; dense kernel gradient:
    :class:`GradientRowConv` (100 [32] filters of kernel (1, out)) -> flatten [mean over rows] ->
    dropout 0.2 -> (with the log-norm) FC 2024 -> 512 -> 256 [64]; conv kernel gradient: Conv2D
    (c_out filters, kernel (kh, kw), same) -> flatten -> dropout -> (with the log-norm) FC 64.
    Encoder: concat -> FC 256 -> 128 -> 64 -> 1. ReLU, N(0, 0.01), biases 0. ``size`` may also be a
    dict overriding entries of :data:`AUTO`.
    """
    widths = network_widths(components, size)
    init = _Init(seed)
    inputs, encoded = [], []
    for comp in components:
        tag = comp.name.replace("/", "_")
        if comp.kind == "output_dense":
            inp = keras.Input(comp.shape, name=f"{tag}")
            inputs.append(inp)
            encoded.append(_stack(inp, widths["output"], init))
        elif comp.kind == "output_conv":
            inp = keras.Input(comp.shape, name=f"{tag}")
            inputs.append(inp)
            h, w, c = comp.shape
            filters = min(c, int(widths.get("output_conv_filters") or c))
            x = keras.layers.Conv2D(filters, (h, w), padding="valid", activation="relu",
                                    kernel_initializer=init.normal())(inp)
            x = init.dropout()(keras.layers.Flatten()(x))
            encoded.append(_stack(x, widths["output_conv"], init))
        elif comp.kind == "label":
            inp = keras.Input(comp.shape, name="label")
            inputs.append(inp)
            encoded.append(_stack(inp, widths["label"], init))
        elif comp.kind == "loss":
            inp = keras.Input(comp.shape, name="loss")
            inputs.append(inp)
            encoded.append(_stack(inp, widths["loss"], init))
        elif comp.kind in ("grad_factors", "grad_full"):
            in_dim, out_dim = comp.shape
            conv = GradientRowConv(out_dim, int(widths["grad_filters"]), seed=init.next(), pool=widths.get("grad_pool"),
                                   name=f"{tag}_rowconv")
            if comp.kind == "grad_factors":
                a = keras.Input((in_dim,), name=f"{tag}_a")
                d = keras.Input((out_dim,), name=f"{tag}_d")
                inputs += [a, d]
                x = conv(a, d)
            else:
                g = keras.Input(comp.shape, name=tag)
                inputs.append(g)
                x = conv(g)
            norm = keras.Input((1,), name=f"{tag}_lognorm")
            inputs.append(norm)
            x = init.dropout(widths.get("grad_dropout", 0.2))(keras.layers.Flatten()(x))
            x = keras.layers.Concatenate()([x, norm])
            encoded.append(_stack(x, widths["grad"], init))
        elif comp.kind == "grad_conv":
            shape = _input_shapes([comp])[0]
            g = keras.Input(shape, name=tag)
            norm = keras.Input((1,), name=f"{tag}_lognorm")
            inputs += [g, norm]
            c_out = comp.shape[-1]
            x = keras.layers.Conv2D(c_out, shape[:2], padding="same", activation="relu",
                                    kernel_initializer=init.normal())(g)
            x = init.dropout()(keras.layers.Flatten()(x))
            x = keras.layers.Concatenate()([x, norm])
            encoded.append(_stack(x, widths["grad_conv"], init))
        else:
            raise AttackError(f"attack network: unknown component kind {comp.kind!r}")
    h = keras.layers.Concatenate(name="encoder_input")(encoded) if len(encoded) > 1 else encoded[0]
    h = _stack(h, widths["encoder"], init)
    out = init.dense(1, activation=None, name="membership_logit")(h)
    return keras.Model(inputs, out, name="whitebox_attack")

