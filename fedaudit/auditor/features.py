"""Compact per-record attack features of a model the adversary sees, from one batched pass of signals.extract.

For the audited records and one model theta (a client's returned model, or the global model), relative to
the global model theta_prev that was sent out in the round:

black-box (outputs of theta and theta_prev only):
    ``phi`` (logit-scaled confidence z_y - logsumexp of the other logits), ``log_loss``, ``neg_entropy``,
    ``neg_mentropy`` (Song and Mittal), ``correct``, ``loss_drop`` = loss(theta_prev) - loss(theta),
    ``phi_gain`` = phi(theta) - phi(theta_prev);
white-box (adds gradients):
    ``log_gnorm/<layer>`` (per-example kernel-gradient norm at theta, per layer, and in total) and
    ``cos/<layer>``, the cosine between minus the record's loss gradient at theta_prev and the update
    theta - theta_prev, per dense layer (kernel and bias) and over all of them (Li et al. 2023: local
    training moves the update along the members' negative gradients);
activations (``[audit] layers``, the outputs of chosen layers, three columns per layer):
    ``act_lognorm/<layer>`` (log of the output's L2 norm at theta), ``act_active/<layer>`` (the fraction of
    output units above zero) and ``act_gain/<layer>`` (the change of the log norm from theta_prev to theta).

The cosines need the gradient at theta_prev only as the two factors of each dense layer's per-example kernel
gradient (its input a and the gradient d at its output; the bias gradient is d), so <g, u> per layer is
``sum((a @ U) * d) + d . u_bias`` and no (records, in, out) tensor is ever built. Layers without that
factorisation (convolutions) contribute gradient norms only, and by default not on the source sample, which every
client's model scores: there their columns and ``log_gnorm/total`` are NaN (:meth:`ModelProbe.source_view`,
``[audit] source_gradients``).

``[audit] gradients`` chooses the gradient layers (default: every layer with a kernel), ``[audit] layers`` the
layers whose outputs give activation features (1-based indices into the model's layers, or names; default none:
measured on ``scenarios/overfit.toml``, the last hidden layer moved the server's per-round whitebox AUC by +0.003 on
average and the participant's not at all, within the noise, so the columns stay opt-in).
The full attack network of Nasr et al. (:mod:`fedaudit.attacks.whitebox`) stays with single-model audits; per
round it would cost minutes where these features cost a fraction of a second (see :mod:`fedaudit.auditor.attack`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedaudit.attacks.scores import logit_confidence
from fedaudit.auditor.attack import BLACKBOX
from fedaudit.attacks.threshold import logit_statistics, loss_scores

_EPS = 1e-30


@dataclass
class BaseSignals:
    """Signals of theta_prev on some rows: loss, phi and the dense layers' gradient factors."""

    loss: np.ndarray
    phi: np.ndarray
    factors: dict           # layer name -> (a (n, in), d (n, out))
    grad_sq: dict           # layer name -> (n,) squared norm of the record's gradient (kernel + bias)
    act_lognorm: dict = field(default_factory=dict)   # output layer name -> (n,) log norm of its output

    def take(self, rows) -> "BaseSignals":
        """The signals of a subset (or a reordering) of the rows."""
        return BaseSignals(loss=self.loss[rows], phi=self.phi[rows],
                           factors={k: (a[rows], d[rows]) for k, (a, d) in self.factors.items()},
                           grad_sq={k: v[rows] for k, v in self.grad_sq.items()},
                           act_lognorm={k: v[rows] for k, v in self.act_lognorm.items()})

    @staticmethod
    def concat(parts: list) -> "BaseSignals":
        return BaseSignals(loss=np.concatenate([p.loss for p in parts]), phi=np.concatenate([p.phi for p in parts]),
                           factors={k: (np.concatenate([p.factors[k][0] for p in parts]),
                                        np.concatenate([p.factors[k][1] for p in parts])) for k in parts[0].factors},
                           grad_sq={k: np.concatenate([p.grad_sq[k] for p in parts]) for k in parts[0].grad_sq},
                           act_lognorm={k: np.concatenate([p.act_lognorm[k] for p in parts])
                                        for k in parts[0].act_lognorm})


@dataclass
class ViewSignals:
    """Features of one model on some records."""

    features: np.ndarray    # (n, F) float32, NaN where a feature is unavailable
    loss: np.ndarray        # (n,)
    correct: np.ndarray     # (n,) bool
    logits: np.ndarray      # (n, C)

    @staticmethod
    def concat(parts: list) -> "ViewSignals":
        return ViewSignals(*(np.concatenate([getattr(p, f) for p in parts])
                             for f in ("features", "loss", "correct", "logits")))


ACTIVATION_STATS = ("act_lognorm", "act_active", "act_gain")


def feature_names_for(layers: list, dense: list, outputs: list = ()) -> list:
    """The feature columns for gradient-norm ``layers``, update-cosine ``dense`` layers and activation
    ``outputs`` layers."""
    return (list(BLACKBOX) + [f"log_gnorm/{n}" for n in layers] + ["log_gnorm/total"]
            + [f"cos/{n}" for n in dense] + (["cos/total"] if dense else [])
            + [f"{stat}/{n}" for n in outputs for stat in ACTIVATION_STATS])


def activation_stats(out: np.ndarray) -> tuple:
    """(log L2 norm, fraction of units above zero) per row of a layer's outputs ``out`` (..., units), float64."""
    norm = np.sqrt(np.einsum("...u,...u->...", out, out, dtype=np.float64))
    return np.log(norm + _EPS), np.mean(out > 0, axis=-1, dtype=np.float64)


def assemble_features(logits: np.ndarray, y: np.ndarray, base: "BaseSignals | None", norms: dict,
                      cosines: list | None, n_dense: int, acts: dict | None = None) -> ViewSignals:
    """One model's :class:`ViewSignals` from its float64 logits, per-layer gradient norms (in feature order),
    update cosines (None: no dense layer; NaN columns without theta_prev) and the chosen output layers'
    :func:`activation_stats` (``acts``: name -> (log norm, fraction active), in feature order)."""
    n = len(y)
    phi, loss, neg_entropy, neg_mentropy = logit_statistics(logits, y)
    correct = np.argmax(logits, axis=1) == y
    cols = [phi, np.log(loss + _EPS), neg_entropy, neg_mentropy, correct.astype(np.float64)]
    if base is not None:
        cols += [base.loss - loss, phi - base.phi]
    else:
        cols += [np.full(n, np.nan)] * 2
    sq_total = np.zeros(n)
    for norm in norms.values():
        sq_total += norm * norm
        cols.append(np.log(norm + _EPS))
    cols.append(0.5 * np.log(sq_total + _EPS))
    if n_dense:
        cols += cosines if cosines is not None else [np.full(n, np.nan)] * (n_dense + 1)
    for name, (lognorm, active) in (acts or {}).items():
        gain = lognorm - base.act_lognorm[name] if base is not None and name in base.act_lognorm else \
            np.full(n, np.nan)
        cols += [lognorm, active, gain]
    features = np.stack(cols, axis=1)
    return ViewSignals(features=features.astype(np.float32), loss=loss, correct=correct,
                       logits=logits.astype(np.float32))


class ProbeViews:
    """What both probes share: one round's views of many models on own rows plus the shared samples."""

    def views(self, items: list, previous, pop: tuple, src: tuple) -> list:
        """``items``: (weights, own x, own y, own base or None, wants the source sample); ``pop`` (x, y, base) and
        ``src`` (x, y, base): the population and source samples (base None without theta_prev). Returns per item
        (ViewSignals of own rows followed by the population sample, ViewSignals of the source sample or None)."""
        px, py, pbase = pop
        sx, sy, sbase = src
        out = []
        for w, ox, oy, obase, wants_source in items:
            base = BaseSignals.concat([obase, pbase]) if obase is not None and pbase is not None else None
            v = self.view(w, base, previous, np.concatenate([ox, px]), np.concatenate([oy, py]))
            out.append((v, self.source_view(w, sbase, previous, sx, sy) if wants_source else None))
        return out

    def source_view(self, weights, base: "BaseSignals | None", previous, x, y) -> ViewSignals:
        """The features of ``weights`` on the source sample (every client's model scores it: the largest share of
        a round's work). Here every feature; a probe may leave out the costly ones (:meth:`ModelProbe.source_view`)."""
        return self.view(weights, base, previous, x, y)


class ModelProbe(ProbeViews):
    """Builds the scenario's model once and computes features for any weights on any records."""

    def __init__(self, model_name: str, model_options: dict, input_shape, num_classes: int, gradients=(),
                 seed: int = 0, layers=(), source_gradients: str = "dense"):
        from fedaudit.models import build_model
        from fedaudit.signals.extract import _gradient_mode
        from fedaudit.signals.layers import kernel_layers, resolve_gradient_layers, resolve_output_layers

        self.model = build_model(model_name, tuple(input_shape), num_classes, seed=seed, **dict(model_options))
        refs = (resolve_gradient_layers(self.model, list(gradients), "audit.gradients") if gradients else
                resolve_gradient_layers(self.model, list(range(1, len(kernel_layers(self.model)) + 1))))
        self.layers = [r.name for r in refs]
        self.dense = [r.name for r in refs if _gradient_mode(r.layer) == "dense"
                      and len(r.layer.input.shape) == 2]
        paths = [w.path for w in self.model.weights]
        self.slots = {}   # layer name -> (kernel index, bias index or None) in get_weights() order
        for r in refs:
            bias = getattr(r.layer, "bias", None)
            self.slots[r.name] = (paths.index(r.layer.kernel.path),
                                  paths.index(bias.path) if bias is not None else None)
        self.outputs = [r.name for r in resolve_output_layers(self.model, list(layers), "audit.layers")]
        # the gradient norms of the source sample's features ([audit] source_gradients)
        self.source_norms = self.dense if source_gradients == "dense" else self.layers
        self.feature_names = feature_names_for(self.layers, self.dense, self.outputs)
        self.blackbox_columns = np.arange(len(BLACKBOX))
        self._loaded = None

    def _extract(self, weights, x, y, gradients: bool = True, norms=None):
        from fedaudit.signals.extract import extract

        if weights is not self._loaded:      # the same weights twice in a row (view, then losses): set once
            self.model.set_weights(weights)
            self._loaded = weights
        if not gradients:
            return extract(self.model, x, y, gradient_norms=False, from_logits=True)
        return extract(self.model, x, y, layers=self.outputs, gradients=self.dense, factorize=True,
                       gradient_norms=self._norm_layers(norms), from_logits=True, layers_option="audit.layers")

    def _norm_layers(self, norms):
        """``extract``'s ``gradient_norms`` for ``norms``: None, every gradient layer; an empty list, none."""
        return self.layers if norms is None else (norms or False)

    def _acts(self, s) -> dict:
        return {name: activation_stats(s.layer_outputs[name].reshape(len(s), -1)) for name in self.outputs}

    def base(self, weights, x, y) -> BaseSignals:
        s = self._extract(weights, x, y)
        factors, grad_sq = {}, {}
        for name in self.dense:
            f = s.factors[name]
            a, d = f.inputs.astype(np.float32), f.output_grads.astype(np.float32)
            factors[name] = (a, d)
            dd = np.einsum("no,no->n", d, d, dtype=np.float64)
            grad_sq[name] = np.einsum("ni,ni->n", a, a, dtype=np.float64) * dd + \
                (dd if self.slots[name][1] is not None else 0.0)
        logits = s.logits.astype(np.float64)
        return BaseSignals(loss=-loss_scores(logits, y), phi=logit_confidence(logits, y),
                           factors=factors, grad_sq=grad_sq,
                           act_lognorm={k: v[0] for k, v in self._acts(s).items()})

    def losses(self, weights, x, y) -> np.ndarray:
        """Per-record loss of ``weights`` (a forward pass only)."""
        return -loss_scores(self._extract(weights, x, y, gradients=False).logits.astype(np.float64), y)

    def view(self, weights, base: BaseSignals | None, previous, x, y) -> ViewSignals:
        """Features of ``weights`` on (x, y); update features need ``base`` (signals of ``previous`` on the
        same rows) and ``previous``."""
        return self._view_of(self._extract(weights, x, y), weights, base, previous, y)

    def source_view(self, weights, base: BaseSignals | None, previous, x, y) -> ViewSignals:
        """:meth:`view` with the gradient norms of ``[audit] source_gradients``: by default ("dense") not those of
        layers that do not factorise (convolutions), whose columns and ``log_gnorm/total`` are then NaN. A
        convolution's per-example gradient norms take a backward pass through it for every record, several times
        the cost of the forward pass and the dense layers' norms, and every client's model scores the source sample;
        the source attribution reads the columns that are there (``simulations/source_inference_cnn.py`` measures
        what that costs it). For a model of dense layers only, or with "all", every feature."""
        return self._view_of(self._extract(weights, x, y, norms=self.source_norms), weights, base, previous, y)

    def views(self, items: list, previous, pop: tuple, src: tuple) -> list:
        """:meth:`ProbeViews.views` with the models' signals batched (:func:`fedaudit.signals.extract_many`: a
        few TensorFlow calls per pass over the items, not one per model): the shared samples as they are, each
        model's own rows padded to the longest."""
        px, py, pbase = pop
        sx, sy, sbase = src
        weights = [it[0] for it in items]
        own = self._extract_many(weights, [it[1] for it in items], [it[2] for it in items])
        pops = self._extract_many(weights, px, py)
        wanted = [i for i, it in enumerate(items) if it[4]]
        srcs = dict(zip(wanted, self._extract_many([weights[i] for i in wanted], sx, sy, norms=self.source_norms))) \
            if wanted else {}
        out = []
        for i, (w, _, oy, obase, _) in enumerate(items):
            parts = [self._view_of(own[i], w, obase, previous, oy)] if len(oy) else []
            v = ViewSignals.concat(parts + [self._view_of(pops[i], w, pbase, previous, py)])
            out.append((v, self._view_of(srcs[i], w, sbase, previous, sy) if i in srcs else None))
        return out

    def _extract_many(self, weights_list, x, y, norms=None) -> list:
        """The models' signals on the rows: outputs of the chosen layers, gradient norms of ``norms`` (default:
        every gradient layer). Each model's own dense factors are not needed (the cosines read theta_prev's)."""
        from fedaudit.signals.extract import extract_many

        if not weights_list:
            return []
        return extract_many(self.model, weights_list, x, y, layers=self.outputs,
                            gradient_norms=self._norm_layers(norms), from_logits=True, layers_option="audit.layers")

    def _view_of(self, s, weights, base: BaseSignals | None, previous, y) -> ViewSignals:
        """A model's :class:`ViewSignals` from its :class:`~fedaudit.signals.extract.Signals` on the rows (NaN
        columns for the gradient norms it does not hold, and then for their total)."""
        missing = np.full(len(y), np.nan)
        norms = {name: s.gradient_norms[name].astype(np.float64) if name in s.gradient_norms else missing
                 for name in self.layers}
        cosines = self._cosines(weights, previous, base, len(y)) if self.dense else None
        return assemble_features(s.logits.astype(np.float64), y, base, norms, cosines, len(self.dense),
                                 self._acts(s))

    def _cosines(self, weights, previous, base, n) -> list:
        if base is None or previous is None:
            return [np.full(n, np.nan)] * (len(self.dense) + 1)
        cols = []
        dot_total = np.zeros(n)
        g_total = np.zeros(n)
        u_total = 0.0
        for name in self.dense:
            k, b = self.slots[name]
            a, d = base.factors[name]
            u_kernel = (np.asarray(weights[k], np.float64) - np.asarray(previous[k], np.float64)).astype(np.float32)
            dot = np.einsum("no,no->n", a @ u_kernel, d, dtype=np.float64)   # float32 matmul, float64 sums
            u_sq = float(np.sum(np.square(u_kernel, dtype=np.float64)))
            if b is not None:
                u_bias = np.asarray(weights[b], np.float64) - np.asarray(previous[b], np.float64)
                dot += d.astype(np.float64) @ u_bias
                u_sq += float(np.sum(u_bias * u_bias))
            g_sq = base.grad_sq[name]
            cols.append(-dot / (np.sqrt(g_sq * u_sq) + _EPS))
            dot_total += dot
            g_total += g_sq
            u_total += u_sq
        cols.append(-dot_total / (np.sqrt(g_total * u_total) + _EPS))
        return cols


def all_finite(weights) -> bool:
    """Whether every array of a weight list is finite."""
    return weights is not None and all(np.isfinite(np.asarray(w)).all() for w in weights)
