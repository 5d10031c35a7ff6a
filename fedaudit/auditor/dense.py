"""The auditor's signals of a plain stack of Dense layers in NumPy, many client models at once.

For the models most federations audit at scale (``mlp``, ``purchase-fcn``: Dense layers with ReLU, tanh,
sigmoid or no activation, ending in logits) the per-record signals of :mod:`fedaudit.auditor.features` need one
forward and one backward pass, and each dense layer's per-example kernel gradient is the outer product of its
input ``a`` and the gradient ``d`` at its pre-activation, so norms and update cosines come from the two
factors. This module computes exactly those, batched over client models: the population and source samples
are the same records under every client's model, so one batched matrix product per layer serves a whole
chunk of clients. It gives the same features as :class:`fedaudit.auditor.features.ModelProbe` (TensorFlow) to
float32 precision (a test checks), imports no TensorFlow (the auditor's process then needs none), and costs a
small fraction of a TensorFlow call per model at these sizes.

:func:`describe_dense` (called where the Keras model exists) says whether a model qualifies and lays it out
as plain data (:class:`DenseStack`): every layer with weights must have a gradient rule with a NumPy half
(:mod:`fedaudit.signals.rules`, :mod:`fedaudit.signals.numpy_rules`) that accepts it; anything else
(convolutions, normalisation, other activations) uses the TensorFlow probe. The passes run each layer through
its NumPy half.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedaudit.auditor.features import (BaseSignals, ProbeViews, ViewSignals, activation_stats, assemble_features,
                                       feature_names_for)
from fedaudit.signals.numpy_rules import ACTIVATIONS, numpy_rule

FLOAT_BUDGET = 8_000_000      # floats a chunk of clients may hold in activations and gradients (~32 MB; a larger
                              # budget was no faster, measured on the scale bench's mlp, and held 4x the memory)


@dataclass(frozen=True)
class DenseLayer:
    name: str
    kernel: int               # index of the kernel in get_weights() order
    bias: int | None          # index of the bias, or None
    activation: str           # one of ACTIVATIONS
    width: int
    rule: str = "dense"       # the NumPy half that runs it (fedaudit.signals.numpy_rules)


@dataclass(frozen=True)
class DenseStack:
    """A model that is Flatten? -> Dense -> ... -> Dense (logits), as plain data."""

    layers: tuple
    input_dim: int
    chosen: tuple             # names of the layers whose gradient norms and update cosines are features
    outputs: tuple = ()       # (name, position) of the layers whose outputs give activation features: position i
                              # is the output of the i-th Dense layer (0: the input, as Flatten or Dropout pass it)

    @property
    def feature_names(self) -> list:
        return feature_names_for(list(self.chosen), list(self.chosen), [n for n, _ in self.outputs])


def describe_dense(model, gradients=(), layers=()) -> DenseStack | None:
    """The :class:`DenseStack` of a Keras model, or None when it is not a plain stack of Dense layers with
    supported activations ending in linear logits (then the TensorFlow probe computes its signals).
    ``gradients`` and ``layers`` are ``[audit] gradients`` and ``[audit] layers`` (checked against the model)."""
    from fedaudit.signals.layers import kernel_layers, resolve_gradient_layers, resolve_output_layers
    from fedaudit.signals.rules import rule_for

    order = [r.name for r in resolve_output_layers(model, list(layers), "audit.layers")]
    paths = [w.path for w in model.weights]
    layers = []
    position = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Flatten", "InputLayer", "Dropout"):    # identities at inference (Flatten: inputs are flat)
            position[layer.name] = len(layers)
            continue
        if kind != "Dense":
            return None
        half = rule_for(layer).numpy
        fields = half.describe(layer) if half is not None else None
        if fields is None:
            return None
        bias = getattr(layer, "bias", None)
        layers.append(DenseLayer(layer.name, paths.index(layer.kernel.path),
                                 paths.index(bias.path) if bias is not None else None, rule=half.name, **fields))
        position[layer.name] = len(layers)
    if not layers or layers[-1].activation != "linear":
        return None
    refs = (resolve_gradient_layers(model, list(gradients), "audit.gradients") if gradients else
            resolve_gradient_layers(model, list(range(1, len(kernel_layers(model)) + 1))))
    input_dim = int(np.prod([d for d in model.input_shape[1:]]))
    return DenseStack(tuple(layers), input_dim, tuple(r.name for r in refs),
                      tuple((name, position[name]) for name in order))


class DenseProbe(ProbeViews):
    """Features of any weights of one :class:`DenseStack` on any records (NumPy; see the module doc)."""

    def __init__(self, stack: DenseStack):
        self.stack = stack
        self.layers = list(stack.chosen)
        self.dense = list(stack.chosen)
        self.feature_names = stack.feature_names
        self.slots = {l.name: (l.kernel, l.bias) for l in stack.layers}
        self.rules = {l.name: numpy_rule(l.rule) for l in stack.layers}

    # -- the passes -----------------------------------------------------------------------------------

    def _stacked(self, weights_list) -> list:
        """Per weight index, the clients' arrays stacked: (B, ...) float32."""
        return [np.stack([np.asarray(w[i], dtype=np.float32) for w in weights_list])
                for i in range(len(weights_list[0]))]

    def _passes(self, stacked, x, y, grads: bool = True):
        """Logits (B, m, C), with ``grads`` each layer's factors (a, d): a (m, in) or (B, m, in), d (B, m, out),
        and the chosen output layers' :func:`activation_stats`, each (B, m) (or (m,) for the input).

        ``x`` is (m, in), shared by the B models, or (B, m, in) with labels ``y`` (B, m): each model its rows."""
        layers = self.stack.layers
        x = np.asarray(x, dtype=np.float32)
        x = x.reshape(*x.shape[: y.ndim], -1)
        acts, zs = [x], []
        a = x
        for layer in layers:
            z, a = self.rules[layer.name].forward(layer, stacked, a)
            zs.append(z)
            acts.append(a)
        logits = acts[-1]
        if not grads:
            return logits, None, {}
        stats = {name: activation_stats(acts[i]) for name, i in self.stack.outputs}
        shifted = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(shifted)
        d = e / e.sum(axis=-1, keepdims=True)
        B, m = d.shape[:2]
        if y.ndim == 1:
            d[:, np.arange(m), y] -= 1.0          # d loss_i / d logits_i of the summed loss
        else:
            d[np.arange(B)[:, None], np.arange(m)[None, :], y] -= 1.0
        factors = {}
        for i in range(len(layers) - 1, -1, -1):   # d: the gradient at layer i's pre-activation output
            rule = self.rules[layers[i].name]
            factors[layers[i].name] = rule.factors(acts[i], d)
            if i:
                d = rule.input_grad(layers[i], stacked, d)
                d = self.rules[layers[i - 1].name].preactivation_grad(layers[i - 1], zs[i - 1], acts[i], d)
        return logits, factors, stats

    def _per_row(self) -> int:
        widest = max([self.stack.input_dim] + [l.width for l in self.stack.layers])
        return widest * (2 * len(self.stack.layers) + 2)

    def _chunk(self, rows: int) -> int:
        """Models per chunk so that a chunk stays within :data:`FLOAT_BUDGET` floats."""
        return int(max(1, FLOAT_BUDGET // (max(1, rows) * self._per_row())))

    def _row_slices(self, rows: int) -> list:
        step = int(max(1, FLOAT_BUDGET // self._per_row()))
        return [slice(s, min(rows, s + step)) for s in range(0, max(rows, 1), step)]

    # -- the probe interface ----------------------------------------------------------------------------

    def base(self, weights, x, y) -> BaseSignals:
        y = np.asarray(y, dtype=np.int64)
        logits, factors, stats = self._passes(self._stacked([weights]), x, y)
        f2, grad_sq = {}, {}
        for name in self.dense:
            a, d = factors[name]
            a = a if a.ndim == 2 else a[0]
            d = d[0]
            f2[name] = (a, d)
            dd = np.einsum("no,no->n", d, d, dtype=np.float64)
            grad_sq[name] = np.einsum("ni,ni->n", a, a, dtype=np.float64) * dd + \
                (dd if self.slots[name][1] is not None else 0.0)
        from fedaudit.attacks.scores import logit_confidence
        from fedaudit.attacks.threshold import loss_scores

        z = logits[0].astype(np.float64)
        return BaseSignals(loss=-loss_scores(z, y), phi=logit_confidence(z, y), factors=f2, grad_sq=grad_sq,
                           act_lognorm={k: v[0].reshape(-1, len(y))[0] for k, v in stats.items()})

    def losses(self, weights, x, y) -> np.ndarray:
        return self.losses_many([weights], x, y)[0]

    def losses_many(self, weights_list, x, y) -> np.ndarray:
        """(B, m) per-record losses of B models on the same records (forward passes only)."""
        from fedaudit.attacks.threshold import loss_scores

        y = np.asarray(y, dtype=np.int64)
        out = np.empty((len(weights_list), len(y)))
        step = self._chunk(len(y))
        for sl in self._row_slices(len(y)):
            for s in range(0, len(weights_list), step):
                logits, _, _ = self._passes(self._stacked(weights_list[s:s + step]), x[sl], y[sl], grads=False)
                for b in range(logits.shape[0]):
                    out[s + b, sl] = -loss_scores(logits[b].astype(np.float64), y[sl])
        return out

    def views(self, items: list, previous, pop: tuple, src: tuple) -> list:
        """:meth:`ProbeViews.views`, batched over the items' models: the shared samples as they are, each model's
        own rows padded to a common length (items with far more rows than the others go one by one)."""
        px, py, pbase = pop
        weights = [it[0] for it in items]
        pop_views = self.view_many(weights, pbase, previous, px, py)
        wanted = [i for i, it in enumerate(items) if it[4]]
        sx, sy, sbase = src
        src_views = self.view_many([weights[i] for i in wanted], sbase, previous, sx, sy) if wanted else []
        src_of = {i: src_views[j] for j, i in enumerate(wanted)}
        sizes = np.array([len(it[2]) for it in items])
        limit = max(64, 4 * int(np.median(sizes))) if sizes.size else 0
        own: dict = {}
        small = [i for i in range(len(items)) if sizes[i] <= limit]
        for i in range(len(items)):
            if i not in small:
                w, ox, oy, obase, _ = items[i]
                own[i] = self.view_many([w], obase, previous, ox, oy)[0]
        step = self._chunk(limit)
        for s in range(0, len(small), step):
            own.update(self._padded([items[i] for i in small[s:s + step]], previous, small[s:s + step]))
        return [(ViewSignals.concat([own[i], pop_views[i]]), src_of.get(i)) for i in range(len(items))]

    def _padded(self, items: list, previous, keys: list) -> dict:
        """The own-row views of a chunk of items, each model's rows padded to the chunk's longest."""
        B, M = len(items), max(len(it[2]) for it in items)
        width = items[0][1].reshape(len(items[0][1]), -1).shape[1] if len(items[0][1]) else self.stack.input_dim
        x = np.zeros((B, M, width), dtype=np.float32)
        y = np.zeros((B, M), dtype=np.int64)
        with_base = all(it[3] is not None for it in items)
        base = None
        if with_base:
            base = BaseSignals(np.zeros((B, M)), np.zeros((B, M)),
                               {k: (np.zeros((B, M, a.shape[1]), np.float32), np.zeros((B, M, d.shape[1]), np.float32))
                                for k, (a, d) in items[0][3].factors.items()},
                               {k: np.zeros((B, M)) for k in items[0][3].grad_sq},
                               {k: np.zeros((B, M)) for k in items[0][3].act_lognorm})
        for b, (_, ox, oy, obase, _) in enumerate(items):
            m = len(oy)
            x[b, :m], y[b, :m] = ox.reshape(m, -1), oy
            if base is not None:
                base.loss[b, :m], base.phi[b, :m] = obase.loss, obase.phi
                for k, (a, d) in obase.factors.items():
                    base.factors[k][0][b, :m], base.factors[k][1][b, :m] = a, d
                for k, g in obase.grad_sq.items():
                    base.grad_sq[k][b, :m] = g
                for k, g in obase.act_lognorm.items():
                    base.act_lognorm[k][b, :m] = g
        v = self._chunk_view(self._stacked([it[0] for it in items]), base, previous, x, y)
        out = {}
        for b, key in enumerate(keys):
            sl = slice(b * M, b * M + len(items[b][2]))
            out[key] = ViewSignals(v.features[sl], v.loss[sl], v.correct[sl], v.logits[sl])
        return out

    def view(self, weights, base: BaseSignals | None, previous, x, y) -> ViewSignals:
        return self.view_many([weights], base, previous, x, y)[0]

    def view_many(self, weights_list, base: BaseSignals | None, previous, x, y) -> list:
        """The :class:`ViewSignals` of B models on the same records (``base``: theta_prev on them)."""
        y = np.asarray(y, dtype=np.int64)
        slices = self._row_slices(len(y))
        if len(slices) > 1:      # more rows than one chunk holds: model by model, rows in slices
            return [ViewSignals.concat([self.view_many([w], base.take(sl) if base is not None else None,
                                                       previous, x[sl], y[sl])[0] for sl in slices])
                    for w in weights_list]
        out = []
        m = len(y)
        step = self._chunk(m)
        for s in range(0, len(weights_list), step):
            B = len(weights_list[s:s + step])
            v = self._chunk_view(self._stacked(weights_list[s:s + step]), base, previous, x, y)
            out += [ViewSignals(v.features[b * m:(b + 1) * m], v.loss[b * m:(b + 1) * m],
                                v.correct[b * m:(b + 1) * m], v.logits[b * m:(b + 1) * m]) for b in range(B)]
        return out

    def _chunk_view(self, stacked, base, previous, x, y) -> ViewSignals:
        """The B models' views side by side (B * m rows): one pass and one feature assembly for the chunk."""
        logits, factors, stats = self._passes(stacked, x, y)
        B, m = logits.shape[:2]
        norms = {}
        for name in self.layers:
            norms[name] = self.rules[name].norms(*factors[name])
        cos = self._cosines(stacked, previous, base, B, m)
        flat = None if base is None else BaseSignals(
            np.broadcast_to(base.loss, (B, m)).reshape(-1), np.broadcast_to(base.phi, (B, m)).reshape(-1), {}, {},
            {k: np.broadcast_to(v, (B, m)).reshape(-1) for k, v in base.act_lognorm.items()})
        acts = {k: tuple(np.broadcast_to(v, (B, m)).reshape(-1) for v in pair) for k, pair in stats.items()}
        return assemble_features(logits.reshape(B * m, -1).astype(np.float64), np.broadcast_to(y, (B, m)).reshape(-1),
                                 flat, {k: n.reshape(-1).astype(np.float64) for k, n in norms.items()},
                                 [c.reshape(-1) for c in cos] if cos is not None else None, len(self.dense), acts)

    def _cosines(self, stacked, previous, base, B: int, n: int):
        """Per chosen layer and in total: (B, n) cosines between minus the gradient at theta_prev and the update
        (the base's arrays shared by the B models, or one row block per model)."""
        if not self.dense:
            return None
        if base is None or previous is None:
            return [np.full((B, n), np.nan)] * (len(self.dense) + 1)
        cols = []
        dot_total, g_total, u_total = np.zeros((B, n)), np.zeros((B, n)), np.zeros(B)
        for name in self.dense:
            k, bi = self.slots[name]
            a, d = base.factors[name]
            u = stacked[k] - np.asarray(previous[k], dtype=np.float32)[None]
            au = np.matmul(a, u)                                   # (B, n, out)
            d = np.broadcast_to(d, au.shape)
            dot = np.einsum("bno,bno->bn", au, d, dtype=np.float64)
            u_sq = np.einsum("bio,bio->b", u, u, dtype=np.float64)
            if bi is not None:
                ub = stacked[bi].astype(np.float64) - np.asarray(previous[bi], dtype=np.float64)[None]
                dot += np.einsum("bo,bno->bn", ub, d, dtype=np.float64)
                u_sq += np.einsum("bo,bo->b", ub, ub)
            g_sq = np.broadcast_to(base.grad_sq[name], (B, n))
            cols.append(-dot / (np.sqrt(g_sq * u_sq[:, None]) + 1e-30))
            dot_total += dot
            g_total += g_sq
            u_total += u_sq
        cols.append(-dot_total / (np.sqrt(g_total * u_total[:, None]) + 1e-30))
        return cols


__all__ = ["ACTIVATIONS", "DenseLayer", "DenseProbe", "DenseStack", "describe_dense"]
