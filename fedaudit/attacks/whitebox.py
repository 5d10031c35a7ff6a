"""The whitebox membership-inference attack of Nasr, Shokri and Houmansadr (IEEE S&P 2019).

Function-level core (what the federated auditor reuses, no data handler needed):

- :func:`whitebox_features` computes, once, the per-example signals the attack reads (outputs of the
  exploited layers, loss, label, kernel gradients of the exploited layers; dense gradients as their two
  factors) with :func:`fedaudit.signals.extract`; :func:`blackbox_features` is the same with only the
  last layer's output, the loss and the label;
- :func:`build_attack_network` builds the attack network for those features: one component per signal,
  concatenated into an encoder that ends in a membership probability;
- :func:`fit_attack` trains it on known members and non-members with binary cross-entropy, choosing
  the epoch on a validation split carved from the known records; ``fitted.predict(features)`` scores.

ML Privacy Meter's API on top: :class:`WhiteBoxAttack` (also :class:`fedaudit.attacks.meminf.initialize`)
with ``train_attack()`` and ``test_attack()``; test_attack writes the plots and arrays ML Privacy Meter
wrote, for records the attack never trained on.

How the network differs from ML Privacy Meter's 2021 code (see ``shared/ATTACKS.md``): signals are computed
once, not every epoch; the gradient convolution of a dense kernel gradient ``a (x) d`` is computed from
the factors (filter f on row r: ``a[r] (d . w_f) + b_f``), so it costs O(filters (in + out)) per example;
what follows it is sized to the data: with ``size="auto"`` the convolution's responses are averaged over
the rows (32 filters -> 32 numbers -> FC 64) instead of flattened into a fully connected layer of
in x filters inputs (``size="paper"``, 2021's widths: 51,200 inputs into 2,024 units for a 512 x 256
kernel, 185 million parameters in the tutorial, which memorise a few hundred known records within a few
epochs); each input is standardised with statistics of the training split, gradients enter as their
direction plus their log-norm and the loss also as its logarithm (members' losses and gradients are
orders of magnitude smaller than non-members', which raw values hide from a network); training runs at
least ``min_steps`` steps (2021's tutorial made 150) and keeps the epoch with the best validation loss.
Weights start N(0, 0.01) as in the paper; Adam's epsilon is 1e-10 (see :data:`ATTACK_OPTIMIZERS`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fedaudit.attacks.threshold import THRESHOLD_ATTACKS
from fedaudit.errors import AttackError
from fedaudit.signals import extract
from fedaudit.signals.extract import check_model, check_records
from fedaudit.signals.layers import kernel_layers, kernel_of, resolve_gradient_layers, resolve_output_layers

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# features


@dataclass(frozen=True)
class Component:
    """One input signal of the attack network.

    kind: ``output_dense`` (n, units), ``output_conv`` (n, H, W, C), ``label`` (n, classes) one-hot,
    ``loss`` (n, 2) loss and log-loss, ``grad_factors`` (n, in) and (n, out) factors of a dense kernel
    gradient, ``grad_full`` (n, in, out) a materialised 2-D kernel gradient, ``grad_conv`` (n, *kernel)
    a convolutional kernel gradient.
    """

    kind: str
    name: str
    shape: tuple
    layer: str | None = None
    layer_index: int | None = None

    def keys(self) -> tuple[str, ...]:
        return (f"{self.name}/a", f"{self.name}/d") if self.kind == "grad_factors" else (self.name,)


@dataclass
class WhiteboxFeatures:
    """The attack's per-example inputs on n records (raw: standardisation happens in the fitted attack)."""

    components: list[Component]
    arrays: dict[str, np.ndarray]
    labels: np.ndarray
    loss: np.ndarray
    logits: np.ndarray
    gradient_norm: np.ndarray      # (n,) norm over all exploited kernel gradients together
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "WhiteboxFeatures":
        index = np.asarray(index)
        return WhiteboxFeatures(self.components, {k: v[index] for k, v in self.arrays.items()}, self.labels[index],
                                self.loss[index], self.logits[index], self.gradient_norm[index], self.num_classes)

    @staticmethod
    def concatenate(parts: list["WhiteboxFeatures"]) -> "WhiteboxFeatures":
        first = parts[0]
        for p in parts[1:]:
            if [(c.kind, c.name, c.shape) for c in p.components] != [(c.kind, c.name, c.shape) for c in first.components]:
                raise AttackError("features: cannot concatenate features of different attack configurations")
        cat = lambda attr: np.concatenate([getattr(p, attr) for p in parts])  # noqa: E731
        return WhiteboxFeatures(first.components, {k: np.concatenate([p.arrays[k] for p in parts]) for k in first.arrays},
                                cat("labels"), cat("loss"), cat("logits"), cat("gradient_norm"), first.num_classes)


def _log_loss(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loss, log loss) from logits in float64; log loss stays finite where the loss underflows."""
    z = np.asarray(logits, np.float64)
    zy = z[np.arange(len(z)), labels]
    other = z.copy()
    other[np.arange(len(z)), labels] = -np.inf
    omax = other.max(axis=1)
    m = omax + np.log(np.exp(other - omax[:, None]).sum(axis=1)) - zy  # = -phi
    loss = np.logaddexp(0.0, m)
    with np.errstate(divide="ignore"):
        log_loss = np.where(m < -30, m, np.log(np.maximum(loss, 1e-300)))
    return loss, log_loss


def whitebox_features(model, x, y, *, layers=(), gradients=(), exploit_loss: bool = True,
                      exploit_label: bool = True, batch_size: int | None = None,
                      layers_option: str = "layers", gradients_option: str = "gradients") -> WhiteboxFeatures:
    """The whitebox attack's inputs for ``model`` on records ``x`` with labels ``y``.

    ``layers``: layers whose outputs the attack reads (1-based indices into ``model.layers`` or names);
    ``gradients``: layers whose kernel gradients it reads (1-based among layers with a kernel, or names).
    Dense gradients stay factored (``extract(..., factorize=True)``). The gradient norm over the
    exploited layers (over the last layer with a kernel when none is exploited) is kept for plots.
    """
    resolved_grads = resolve_gradient_layers(model, gradients, gradients_option)
    with_kernel = kernel_layers(model)
    norm_layers = [r.name for r in resolved_grads] or ([with_kernel[-1].name] if with_kernel else [])
    sig = extract(model, x, y, layers=layers, gradients=gradients, loss=True, logits=True, gradient_norms=norm_layers,
                  factorize=True, batch_size=batch_size, layers_option=layers_option,
                  gradients_option=gradients_option)
    num_classes = int(sig.logits.shape[1])
    components, arrays = [], {}
    for index, name in sig.output_layers:
        value = sig.layer_outputs[name].astype(np.float32)
        if value.ndim == 3:
            value = value[:, :, None, :]
        if value.ndim == 4:
            kind = "output_conv"
        else:
            kind, value = "output_dense", value.reshape(len(value), -1)
        comp = Component(kind, f"output/{name}", tuple(value.shape[1:]), name, index)
        components.append(comp)
        arrays[comp.name] = value
    if exploit_label:
        comp = Component("label", "label", (num_classes,))
        components.append(comp)
        arrays["label"] = np.eye(num_classes, dtype=np.float32)[sig.labels]
    loss, log_loss = _log_loss(sig.logits, sig.labels)
    if exploit_loss:
        comp = Component("loss", "loss", (2,))
        components.append(comp)
        arrays["loss"] = np.stack([loss, log_loss], axis=1).astype(np.float32)
    for index, name in sig.gradient_layers:
        if name in sig.factors:
            f = sig.factors[name]
            comp = Component("grad_factors", f"grad/{name}", f.kernel_shape, name, index)
            arrays[f"{comp.name}/a"], arrays[f"{comp.name}/d"] = f.inputs, f.output_grads
        else:
            g = sig.gradients[name]
            kind = "grad_full" if g.ndim == 3 else "grad_conv"
            comp = Component(kind, f"grad/{name}", tuple(g.shape[1:]), name, index)
            arrays[comp.name] = g
        components.append(comp)
    if not components:
        raise AttackError("attack: nothing to exploit; allowed: at least one of layers_to_exploit, "
                          "gradients_to_exploit, exploit_loss=True, exploit_label=True")
    return WhiteboxFeatures(components, arrays, sig.labels, loss, sig.logits.astype(np.float64),
                            sig.total_gradient_norm(), num_classes)


def blackbox_features(model, x, y, *, exploit_loss: bool = True, exploit_label: bool = True,
                      batch_size: int | None = None) -> WhiteboxFeatures:
    """The black-box attack's inputs: the last layer's output, the loss and the label only."""
    check_model(model)
    return whitebox_features(model, x, y, layers=[len(model.layers)], gradients=(), exploit_loss=exploit_loss,
                             exploit_label=exploit_label, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# preprocessing: standardise with statistics of the training split


def _safe_std(values: np.ndarray, axis) -> np.ndarray:
    std = values.std(axis=axis)
    return np.where(std > 1e-12, std, 1.0)


def _direction_and_lognorm(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = g.reshape(len(g), -1).astype(np.float64)
    norm = np.linalg.norm(flat, axis=1)
    unit = (flat / np.maximum(norm, 1e-30)[:, None]).reshape(g.shape).astype(np.float32)
    return unit, np.log(np.maximum(norm, 1e-30))


class Preprocessor:
    """Turns raw :class:`WhiteboxFeatures` into the network's inputs (a list of float32 arrays).

    output layers: standardised per unit (dense) or per channel (conv); label: one-hot as is; loss:
    loss and log-loss standardised; dense gradient factors: the input ``a`` centred per unit and divided
    by one overall scale, the output gradient ``d`` as its direction, plus the log of the gradient's norm
    ``|a| |d|`` standardised; materialised gradients: direction plus log-norm. Statistics come from the
    training split only.
    """

    def __init__(self, components: list[Component]):
        self.components = components
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _raw(self, comp: Component, f: WhiteboxFeatures):
        """Per component: (main inputs before standardisation, scalar side input or None)."""
        if comp.kind == "grad_factors":
            a, d = f.arrays[f"{comp.name}/a"], f.arrays[f"{comp.name}/d"]
            dn = np.linalg.norm(d.astype(np.float64), axis=1)
            an = np.linalg.norm(a.astype(np.float64), axis=1)
            d_unit = (d / np.maximum(dn, 1e-30)[:, None]).astype(np.float32)
            lognorm = np.log(np.maximum(an * dn, 1e-30))
            return [a.astype(np.float32), d_unit], lognorm
        if comp.kind in ("grad_full", "grad_conv"):
            g = f.arrays[comp.name]
            unit, lognorm = _direction_and_lognorm(g)
            if comp.kind == "grad_conv":
                shape = comp.shape
                if len(shape) == 3:        # Conv1D kernel (k, c_in, c_out)
                    image = (shape[0], 1, shape[1] * shape[2])
                elif len(shape) == 4:      # Conv2D / depthwise kernel (kh, kw, c_in, c_out)
                    image = (shape[0], shape[1], shape[2] * shape[3])
                else:                      # Conv3D and others: fold the leading spatial axes
                    image = (int(np.prod(shape[:-3])), shape[-3], shape[-2] * shape[-1])
                unit = unit.reshape(len(unit), *image)
            return [unit], lognorm
        return [f.arrays[comp.name].astype(np.float32)], None

    def fit(self, f: WhiteboxFeatures) -> "Preprocessor":
        for comp in self.components:
            main, side = self._raw(comp, f)
            if comp.kind in ("output_dense", "loss"):
                v = main[0].astype(np.float64)
                self.stats[comp.name] = (v.mean(axis=0), _safe_std(v, 0))
            elif comp.kind == "output_conv":
                v = main[0].astype(np.float64)
                self.stats[comp.name] = (v.mean(axis=(0, 1, 2)), _safe_std(v, (0, 1, 2)))
            elif comp.kind == "grad_factors":  # centred per unit, scaled by one number: quiet units stay quiet
                v = main[0].astype(np.float64)
                self.stats[comp.name] = (v.mean(axis=0), np.array(max(float((v - v.mean(axis=0)).std()), 1e-12)))
            if side is not None:
                self.stats[comp.name + "/norm"] = (np.array(side.mean()), _safe_std(side, 0))
        return self

    def transform(self, f: WhiteboxFeatures) -> list[np.ndarray]:
        out = []
        for comp in self.components:
            main, side = self._raw(comp, f)
            if comp.name in self.stats:
                mean, std = self.stats[comp.name]
                main[0] = ((main[0] - mean) / std).astype(np.float32)
            out.extend(main)
            if side is not None:
                mean, std = self.stats[comp.name + "/norm"]
                out.append(((side - mean) / std).astype(np.float32)[:, None])
        return out


def _input_shapes(components: list[Component]) -> list[tuple]:
    shapes = []
    for comp in components:
        if comp.kind == "grad_factors":
            shapes += [(comp.shape[0],), (comp.shape[1],), (1,)]
        elif comp.kind == "grad_full":
            shapes += [comp.shape, (1,)]
        elif comp.kind == "grad_conv":
            s = comp.shape
            image = ((s[0], 1, s[1] * s[2]) if len(s) == 3 else (s[0], s[1], s[2] * s[3]) if len(s) == 4
                     else (int(np.prod(s[:-3])), s[-3], s[-2] * s[-1]))
            shapes += [image, (1,)]
        else:
            shapes.append(comp.shape)
    return shapes


# ---------------------------------------------------------------------------------------------
# the attack network


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


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class FittedAttack:
    """A trained attack network with the preprocessing fitted on its training split."""

    network: keras.Model
    preprocessor: Preprocessor
    history: list[dict]
    best_epoch: int
    steps: int
    train_index: np.ndarray
    val_index: np.ndarray
    seconds: float = 0.0
    _predict_fn: object = field(default=None, repr=False)

    def predict(self, features: WhiteboxFeatures, batch_size: int = 1024) -> np.ndarray:
        """Membership probability of each record, shape (n,)."""
        if [(c.kind, c.shape) for c in features.components] != [(c.kind, c.shape) for c in self.preprocessor.components]:
            raise AttackError("predict: these features were extracted with other layers or gradients than the "
                              "attack was trained on; extract them with the same configuration")
        inputs = self.preprocessor.transform(features)
        if self._predict_fn is None:
            net = self.network
            self._predict_fn = tf.function(lambda *xs: tf.sigmoid(net(list(xs), training=False))[:, 0],
                                           reduce_retracing=True, autograph=False)
        out = [self._predict_fn(*[tf.constant(x[s:s + batch_size]) for x in inputs]).numpy()
               for s in range(0, len(features), batch_size)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    @property
    def parameters(self) -> int:
        return int(self.network.count_params())


#: the attack network's optimizers. Adam's and RMSprop's epsilon is 1e-10, not Keras' 1e-7: with N(0, 0.01)
#: weights the first layers' gradients start far below 1e-7, where a 1e-7 epsilon shrinks their steps so much
#: that the network can sit on its initial plateau (or its ReLUs die) for thousands of steps at lr 1e-4.
ATTACK_OPTIMIZERS = {
    "adam": lambda lr: keras.optimizers.Adam(learning_rate=lr, epsilon=1e-10),
    "sgd": lambda lr: keras.optimizers.SGD(learning_rate=lr),
    "momentum": lambda lr: keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(learning_rate=lr, epsilon=1e-10),
}


def write_tensorboard(history: list[dict], directory) -> Path:
    """The attack's training curves as TensorBoard scalars (``attack/train_loss``, ``attack/val_loss``,
    ``attack/val_auc``, ``attack/val_accuracy``; step = epoch) in one event file under ``directory``."""
    from fedaudit.scalars import write_scalars

    steps = [(int(record["epoch"]), {f"attack/{k}": float(v) for k, v in record.items() if k not in ("epoch", "steps")})
             for record in history]
    return write_scalars(directory, steps, kind="whitebox", replace=False)


def _split_known(membership: np.ndarray, val_fraction: float, rng: np.random.Generator):
    train, val = [], []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(membership == cls))
        n_val = int(round(val_fraction * len(idx)))
        if val_fraction > 0:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _auc(member, nonmember) -> float:
    from fedaudit.metrics import auc

    return auc(member, nonmember) if len(member) and len(nonmember) else float("nan")


def fit_attack(features: WhiteboxFeatures, membership, *, epochs: int = 100, batch_size: int = 64,
               learning_rate: float = 1e-3, seed: int = 0, val_fraction: float = 0.2, min_steps: int = 2000,
               patience: int | None = 500, optimizer: str = "adam", size="auto", select: str = "loss",
               log_dir=None, run_name: str = "attack", on_epoch=None) -> FittedAttack:
    """Train the attack network on known records: ``membership[i]`` is 1 for a member, 0 otherwise.

    A stratified ``val_fraction`` of the known records is held out; after every epoch the network is
    scored on it and the weights of the best epoch (lowest validation loss, or highest validation AUC
    with ``select="auc"``) are kept. Training runs ``epochs`` passes, or more to reach ``min_steps``
    optimizer steps, but stops early, after at least ``epochs`` passes, once the best epoch lies
    ``patience`` steps back (None: never) and the validation loss has left its initial plateau (fallen
    2% below its first value; N(0, 0.01) weights learn nothing for a while at small learning rates). Binary cross-entropy, classes weighted to balance. With
    ``log_dir``, TensorBoard scalars of every epoch (train loss, validation loss/AUC/accuracy) go to an
    event file in ``log_dir/run_name`` (see :func:`write_tensorboard`). ``on_epoch(record,
    network)``, if given, is called after every epoch (progress reporting).
    """
    membership = np.asarray(membership).astype(np.int64).ravel()
    if len(membership) != len(features):
        raise AttackError(f"membership: {len(membership)} labels for {len(features)} records; need one per record")
    if not set(np.unique(membership)) <= {0, 1} or len(np.unique(membership)) < 2:
        raise AttackError("membership: need both members (1) and non-members (0) among the known records")
    checks = [("epochs", epochs, 1), ("batch_size", batch_size, 1), ("min_steps", min_steps, 0)]
    if patience is not None:
        checks.append(("patience", patience, 1))
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise AttackError(f"{name}: must be an integer >= {low}; got {value!r}")
    if not 0 <= val_fraction < 1:
        raise AttackError(f"val_fraction: must be in [0, 1); got {val_fraction!r}")
    if select not in ("loss", "auc"):
        raise AttackError(f"select: must be 'loss' or 'auc'; got {select!r}")
    if optimizer not in ATTACK_OPTIMIZERS:
        raise AttackError(f"optimizer: unknown optimizer {optimizer!r}; allowed: {', '.join(ATTACK_OPTIMIZERS)}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    train_idx, val_idx = _split_known(membership, val_fraction, rng)
    train_f = features.subset(train_idx)
    prep = Preprocessor(features.components).fit(train_f)
    x_train = prep.transform(train_f)
    y_train = membership[train_idx].astype(np.float32)
    x_val = prep.transform(features.subset(val_idx)) if len(val_idx) else None
    y_val = membership[val_idx]
    frac = y_train.mean()
    weights = np.where(y_train == 1, 0.5 / frac, 0.5 / (1 - frac)).astype(np.float32)

    net = build_attack_network(features.components, seed=seed, size=size)
    opt = ATTACK_OPTIMIZERS[optimizer](float(learning_rate))
    opt.build(net.trainable_variables)
    specs = [tf.TensorSpec((None, *x.shape[1:]), tf.float32) for x in x_train]

    def train_step(inputs, target, weight):
        with tf.GradientTape() as tape:
            logit = net(list(inputs), training=True)[:, 0]
            loss = tf.reduce_mean(weight * tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logit))
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return loss

    step = tf.function(train_step, input_signature=[specs, tf.TensorSpec((None,), tf.float32),
                                                    tf.TensorSpec((None,), tf.float32)], autograph=False)
    predict = tf.function(lambda inputs: net(list(inputs), training=False)[:, 0], input_signature=[specs],
                          autograph=False)

    n = len(y_train)
    batch = min(int(batch_size), n)
    steps_per_epoch = math.ceil(n / batch)
    total_epochs = max(int(epochs), math.ceil(min_steps / steps_per_epoch))
    history, best, best_weights, best_epoch, steps, armed = [], None, net.get_weights(), 0, 0, False
    for epoch in range(1, total_epochs + 1):
        order = rng.permutation(n)
        total = 0.0
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            total += float(step([x[idx] for x in x_train], y_train[idx], weights[idx])) * len(idx)
            steps += 1
        record = {"epoch": epoch, "steps": steps, "train_loss": total / n}
        if x_val is not None:
            logit = np.concatenate([predict([x[s:s + 4096] for x in x_val]).numpy()
                                    for s in range(0, len(y_val), 4096)]).astype(np.float64)
            prob = 1 / (1 + np.exp(-logit))
            vw = np.where(y_val == 1, 0.5 / y_val.mean(), 0.5 / (1 - y_val.mean()))
            bce = np.logaddexp(0, logit) - y_val * logit
            record.update(val_loss=float(np.mean(vw * bce)), val_auc=_auc(prob[y_val == 1], prob[y_val == 0]),
                          val_accuracy=float(np.mean((prob > 0.5) == (y_val == 1))))
            score = record["val_loss"] if select == "loss" else -record["val_auc"]
        else:
            score = record["train_loss"]
        if best is None or score < best:
            best, best_weights, best_epoch = score, net.get_weights(), epoch
        history.append(record)
        if on_epoch is not None:
            on_epoch(record, net)
        if x_val is not None and not armed:  # N(0, 0.01) weights sit on a plateau first: wait until it is left
            armed = record["val_loss"] < 0.98 * history[0]["val_loss"]
        stop = (patience is not None and armed and epoch >= epochs
                and (epoch - best_epoch) * steps_per_epoch >= patience)
        if stop:
            break
    if log_dir is not None:
        write_tensorboard(history, Path(log_dir) / run_name)
    net.set_weights(best_weights)
    return FittedAttack(net, prep, history, best_epoch, steps, train_idx, val_idx,
                        seconds=time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# ML Privacy Meter's API


@dataclass
class AttackResult:
    """What :meth:`WhiteBoxAttack.test_attack` measured on records the attack did not train on."""

    auc: float
    tpr_at_1pct: float
    tpr_at_0_1pct: float
    accuracy: float                      # balanced attack accuracy at the best threshold
    summary: object                      # fedaudit.metrics.Summary of the attack
    member_probs: np.ndarray
    nonmember_probs: np.ndarray
    baselines: dict = field(default_factory=dict)   # threshold attacks on the same records: name -> Summary
    log_dir: Path | None = None
    files: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"auc": self.auc, "tpr_at_1pct": _finite(self.tpr_at_1pct), "tpr_at_0_1pct": _finite(self.tpr_at_0_1pct),
                "accuracy": self.accuracy, "n_members": int(len(self.member_probs)),
                "n_nonmembers": int(len(self.nonmember_probs)), "summary": self.summary.to_dict(),
                "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "log_dir": str(self.log_dir) if self.log_dir else None}


def _finite(value):
    return None if value is None or not np.isfinite(value) else float(value)


def _output_shape(layer):
    try:
        return tuple(layer.output.shape[1:])
    except (AttributeError, ValueError):  # a layer never called symbolically
        return None


def _check_positive(name: str, value, kind=int):
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer) if kind is int else (int, float, np.number))
    if not ok or not value > 0:
        raise AttackError(f"{name}: must be a positive {'integer' if kind is int else 'number'}; got {value!r}")
    return kind(value)


class WhiteBoxAttack:
    """Nasr et al.'s whitebox membership-inference attack with ML Privacy Meter's ``meminf`` API.

    Args:
        target_train_model: the model whose signals train the attack.
        target_attack_model: the model the trained attack is evaluated on (often the same model).
        train_datahandler: gives the known records (:meth:`fedaudit.data.attack_data.train_split`).
        attack_datahandler: gives the records to evaluate on (``test_split``); records the attack
            trained on are dropped from them.
        device: a TensorFlow device string for the attack ('/GPU:0'), or None.
        optimizer, learning_rate, epochs, batch_size: the attack network's training (``batch_size``
            defaults to the train handler's). Training runs at least ``min_steps`` optimizer steps.
        model_name: names the TensorBoard run.
        layers_to_exploit: 1-based indices into ``model.layers`` (or names) of layers whose outputs the
            attack reads; ``[len(model.layers)]`` alone with no gradients is the black-box attack.
        gradients_to_exploit: 1-based indices among the layers that have a kernel (or names) whose
            kernel gradients the attack reads.
        exploit_loss, exploit_label: whether the attack reads the loss and the one-hot label.
        log_dir: where test_attack writes plots, arrays, ``result.json`` and ``tensorboard/``.
        seed: seeds the validation split, the shuffles and the network's initialisation.
        val_fraction: fraction of the known records held out to choose the epoch.
        size: attack network widths, 'auto' (sized to the data) or 'paper' (2021's widths).
    """

    def __init__(self, target_train_model, target_attack_model, train_datahandler, attack_datahandler,
                 device=None, optimizer="adam", model_name="sample_model", layers_to_exploit=None,
                 gradients_to_exploit=None, exploit_loss=True, exploit_label=True, learning_rate=0.001,
                 epochs=100, batch_size=None, *, log_dir="logs", seed: int = 0, min_steps: int = 2000,
                 val_fraction: float = 0.2, size="auto", select: str = "loss", patience: int | None = 500,
                 signal_batch_size=None):
        self.num_classes = check_model(target_train_model)
        other = check_model(target_attack_model)
        if other != self.num_classes or tuple(target_attack_model.input_shape) != tuple(target_train_model.input_shape):
            raise AttackError(
                f"target_attack_model: takes {target_attack_model.input_shape} and has {other} outputs, but "
                f"target_train_model takes {target_train_model.input_shape} and has {self.num_classes}; "
                "allowed: two models of the same architecture")
        self.layers_to_exploit = list(layers_to_exploit or [])
        self.gradients_to_exploit = list(gradients_to_exploit or [])
        for model, label in ((target_train_model, "target_train_model"), (target_attack_model, "target_attack_model")):
            outs = resolve_output_layers(model, self.layers_to_exploit, "layers_to_exploit")
            grads = resolve_gradient_layers(model, self.gradients_to_exploit, "gradients_to_exploit")
            shapes = ([_output_shape(r.layer) for r in outs], [tuple(kernel_of(r.layer).shape) for r in grads])
            if label == "target_train_model":
                reference = shapes
            elif shapes != reference:
                raise AttackError("target_attack_model: its exploited layers have other shapes than "
                                  "target_train_model's; allowed: two models of the same architecture")
        if not (self.layers_to_exploit or self.gradients_to_exploit or exploit_loss or exploit_label):
            raise AttackError("attack: nothing to exploit; allowed: at least one of layers_to_exploit, "
                              "gradients_to_exploit, exploit_loss=True, exploit_label=True")
        if optimizer not in ATTACK_OPTIMIZERS:
            raise AttackError(f"optimizer: unknown optimizer {optimizer!r}; allowed: {', '.join(ATTACK_OPTIMIZERS)}")
        for name, handler in (("train_datahandler", train_datahandler), ("attack_datahandler", attack_datahandler)):
            method = "train_split" if name == "train_datahandler" else "test_split"
            if not callable(getattr(handler, method, None)):
                raise AttackError(f"{name}: expected a fedaudit.data.attack_data (with {method}()), got "
                                  f"{type(handler).__name__}")
        self.target_train_model, self.target_attack_model = target_train_model, target_attack_model
        self.train_datahandler, self.attack_datahandler = train_datahandler, attack_datahandler
        self.device, self.optimizer, self.model_name = device, optimizer, str(model_name)
        self.exploit_loss, self.exploit_label = bool(exploit_loss), bool(exploit_label)
        self.learning_rate = _check_positive("learning_rate", learning_rate, float)
        self.epochs = _check_positive("epochs", epochs)
        self.batch_size = _check_positive("batch_size", batch_size if batch_size is not None
                                          else getattr(train_datahandler, "batch_size", 64))
        self.log_dir = Path(log_dir)
        self.seed, self.min_steps, self.val_fraction = int(seed), int(min_steps), float(val_fraction)
        self.size, self.select, self.signal_batch_size, self.patience = size, select, signal_batch_size, patience
        self.fitted: FittedAttack | None = None
        self.seconds: dict[str, float] = {}
        self._train_hashes: set = set()

    # -- helpers -----------------------------------------------------------------------------------

    def _device(self):
        import contextlib

        return tf.device(self.device) if self.device else contextlib.nullcontext()

    def features(self, model, x, y, source: str) -> WhiteboxFeatures:
        """The attack's inputs for ``model`` on (x, y), with this attack's configuration."""
        check_records(model, x, y, self.num_classes, source)
        with self._device():
            return whitebox_features(model, x, y, layers=self.layers_to_exploit, gradients=self.gradients_to_exploit,
                                     exploit_loss=self.exploit_loss, exploit_label=self.exploit_label,
                                     batch_size=self.signal_batch_size, layers_option="layers_to_exploit",
                                     gradients_option="gradients_to_exploit")

    # -- ML Privacy Meter's two calls -------------------------------------------------------------------

    def train_attack(self) -> dict:
        """Compute the known records' signals once and train the attack network on them."""
        from fedaudit.data.handler import record_hashes

        split = self.train_datahandler.train_split()
        t0 = time.perf_counter()
        feats = self.features(self.target_train_model, split.x, split.y, "train_datahandler")
        self.seconds["train_signals"] = time.perf_counter() - t0
        with self._device():
            self.fitted = fit_attack(feats, split.membership, epochs=self.epochs, batch_size=self.batch_size,
                                     learning_rate=self.learning_rate, seed=self.seed, val_fraction=self.val_fraction,
                                     min_steps=self.min_steps, patience=self.patience, optimizer=self.optimizer,
                                     size=self.size,
                                     select=self.select, log_dir=self.log_dir / "tensorboard", run_name=self.model_name)
        self.seconds["train_fit"] = self.fitted.seconds
        self._train_hashes = set(record_hashes(split.x, split.y).tolist())
        best = self.fitted.history[self.fitted.best_epoch - 1]
        log.info("attack trained: %d known records, %d parameters, %d steps, best epoch %d (validation AUC %.3f)",
                 len(split), self.fitted.parameters, self.fitted.steps, self.fitted.best_epoch, best.get("val_auc", np.nan))
        return {"known_records": len(split), "parameters": self.fitted.parameters, "steps": self.fitted.steps,
                "best_epoch": self.fitted.best_epoch, **{k: v for k, v in best.items() if k.startswith("val_")}}

    def test_attack(self, log_dir=None) -> AttackResult:
        """Score the attack on records it did not train on; write plots and arrays to ``log_dir``."""
        from fedaudit.data.handler import AttackSplit, record_hashes
        from fedaudit.metrics import summarize
        from fedaudit import plots
        from fedaudit.rundir import atomic_save_npy, atomic_write_text, json_safe

        if self.fitted is None:
            raise AttackError("test_attack: the attack is not trained; call train_attack() first")
        out_dir = Path(log_dir) if log_dir is not None else self.log_dir
        split = self.attack_datahandler.test_split()
        keep = np.array([h not in self._train_hashes for h in record_hashes(split.x, split.y)], dtype=bool)
        if not keep.all():
            log.warning("dropped %d evaluation records that the attack trained on", int((~keep).sum()))
            nm = len(split.members_y)
            split = AttackSplit(split.members_x[keep[:nm]], split.members_y[keep[:nm]],
                                split.nonmembers_x[keep[nm:]], split.nonmembers_y[keep[nm:]])
        if not len(split.members_y) or not len(split.nonmembers_y):
            raise AttackError("attack_datahandler: no held-out members or non-members are left that the attack "
                              "did not train on; allowed: handlers whose test records differ from the training ones")
        t0 = time.perf_counter()
        feats = self.features(self.target_attack_model, split.x, split.y, "attack_datahandler")
        t1 = time.perf_counter()
        probs = self.fitted.predict(feats)
        t2 = time.perf_counter()
        self.seconds.update(test_signals=t1 - t0, test_scoring=t2 - t1)
        member = split.membership == 1
        mp, nmp = probs[member], probs[~member]
        summary = summarize(mp, nmp)
        baselines = {name: summarize(s[member], s[~member])
                     for name, fn in THRESHOLD_ATTACKS.items() for s in [fn(feats.logits, feats.labels)]}
        plot_dir = out_dir / "plots"
        plot_dir.mkdir(parents=True, exist_ok=True)
        ml, nml = split.members_y, split.nonmembers_y
        files = [
            plots.plot_probability_histogram(mp, nmp, plot_dir / "privacy_risk.png", title="Privacy risk"),
            plots.plot_roc({"whitebox attack" if self.gradients_to_exploit else "attack": summary,
                            "loss threshold": baselines["loss"]}, plot_dir / "roc.png"),
            plots.plot_roc({"attack": summary, "loss threshold": baselines["loss"]}, plot_dir / "roc_log.png", log=True),
            plots.plot_gradient_norms(ml, feats.gradient_norm[member], nml, feats.gradient_norm[~member],
                                      plot_dir / "gradient_norm.png"),
            *plots.plot_per_label_histograms(mp, ml, nmp, nml, plot_dir),
        ]
        arrays = {"member_probs.npy": mp.astype(np.float32)[:, None], "nonmember_probs.npy": nmp.astype(np.float32)[:, None],
                  "m_features.npy": split.members_x, "m_labels.npy": ml, "nm_features.npy": split.nonmembers_x,
                  "nm_labels.npy": nml}
        files += [atomic_save_npy(out_dir / name, value) for name, value in arrays.items()]
        self.seconds["outputs"] = time.perf_counter() - t2
        result = AttackResult(summary.auc, summary.tpr_at_1pct, summary.tpr_at_0_1pct, summary.accuracy, summary,
                              mp, nmp, baselines, out_dir, [str(f) for f in files], dict(self.seconds))
        data = {"model_name": self.model_name, "layers_to_exploit": self.layers_to_exploit,
                "gradients_to_exploit": self.gradients_to_exploit, "exploit_loss": self.exploit_loss,
                "exploit_label": self.exploit_label, "attack_parameters": self.fitted.parameters,
                "attack_steps": self.fitted.steps, "best_epoch": self.fitted.best_epoch, **result.to_dict()}
        files.append(atomic_write_text(out_dir / "result.json", json.dumps(json_safe(data), indent=2) + "\n"))
        result.files = [str(f) for f in files]
        log.info("attack on %d members / %d non-members it did not train on: AUC %.3f, TPR %.3f at 1%% FPR "
                 "(loss threshold AUC %.3f)", len(mp), len(nmp), summary.auc, summary.tpr_at_1pct, baselines["loss"].auc)
        return result


__all__ = ["Component", "WhiteboxFeatures", "whitebox_features", "blackbox_features", "Preprocessor",
           "GradientRowConv", "build_attack_network", "network_widths", "fit_attack", "FittedAttack", "write_tensorboard",
           "WhiteBoxAttack", "AttackResult", "ATTACK_OPTIMIZERS"]
