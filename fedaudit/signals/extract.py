"""Per-example signals of a Keras classifier, computed in one vectorised pass per chunk.

For every example: logits, loss, the outputs of chosen layers, the gradient of the example's loss with
respect to chosen layers' kernels, and per-layer gradient norms. One ``tf.function`` runs the model
once forward (inference mode, so BatchNormalization uses its moving statistics and examples stay
independent) and once backward per chunk of examples. How a layer's per-example gradient is computed is its
rule's business (:mod:`fedaudit.signals.rules`, one rule per layer type):

- dense layer, input of rank 2: the per-example kernel gradient is the outer product of the layer's
  input ``a`` and the gradient ``d`` of the loss at the layer's pre-activation output. The graph
  returns only the two factors; norms are ``|a| |d|``; with ``factorize=True`` the caller gets the
  factors (:class:`DenseFactors`), otherwise (the default) the (n, in, out) array, written from the
  factors chunk by chunk in place;
- convolutional layer (Conv1D/Conv2D, channels last, groups 1): the per-example gradient is the
  product of the input's patches (kh*kw strided slices of the padded input) with ``d``, one batched
  matmul per chunk;
- embedding and normalisation layers (named in ``gradients``): the output gradient scattered into the
  looked-up rows; the sum of ``d * x_hat`` for the scale;
- any other layer with a kernel (depthwise, separable, transposed, Conv3D, ...): a Jacobian of the
  per-example losses (``pfor``-vectorised).

Chunks keep memory bounded; TensorFlow runs the pass on its GPU when it sees one.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from fedaudit.errors import AttackError
from fedaudit.signals.keras_private import functional_graph, run_through_graph, takes_training_argument
from fedaudit.signals.layers import LayerRef, kernel_of, resolve_gradient_layers, resolve_output_layers
from fedaudit.signals.rules import flat_norms, rule_for, weight_of

logger = logging.getLogger(__name__)

#: floats one chunk may hold in its outputs and largest intermediates (about 256 MB)
CHUNK_BUDGET = 64 * 1024 * 1024
MAX_CHUNK = 1024


@dataclass
class DenseFactors:
    """The two factors of a dense layer's per-example kernel gradients: ``grad[i] = outer(a[i], d[i])``."""

    inputs: np.ndarray        # (n, in): the layer's input a
    output_grads: np.ndarray  # (n, out): d, the gradient of the loss at the layer's pre-activation output

    def materialize(self, index=slice(None)) -> np.ndarray:
        """The full per-example kernel gradients (n, in, out) (of the examples at ``index``)."""
        return np.einsum("bi,bo->bio", self.inputs[index], self.output_grads[index])

    def norms(self) -> np.ndarray:
        """Frobenius norm of every example's kernel gradient, without materialising it."""
        return np.linalg.norm(self.inputs, axis=1) * np.linalg.norm(self.output_grads, axis=1)

    @property
    def kernel_shape(self) -> tuple[int, int]:
        return (self.inputs.shape[1], self.output_grads.shape[1])

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class Signals:
    """Per-example signals of one model on n examples (NumPy arrays, first axis = example).

    Layers are keyed by name; ``output_layers`` and ``gradient_layers`` keep the requested order
    with each layer's 1-based index (see :mod:`fedaudit.signals.layers` for the two countings).
    """

    labels: np.ndarray                                    # (n,) int64
    logits: np.ndarray | None = None                      # (n, classes)
    loss: np.ndarray | None = None                        # (n,)
    layer_outputs: dict[str, np.ndarray] = field(default_factory=dict)
    gradients: dict[str, np.ndarray] = field(default_factory=dict)    # (n, *kernel.shape), materialised
    factors: dict[str, DenseFactors] = field(default_factory=dict)    # dense layers when factorize=True
    gradient_norms: dict[str, np.ndarray] = field(default_factory=dict)  # (n,) per layer
    output_layers: list[tuple[int, str]] = field(default_factory=list)
    gradient_layers: list[tuple[int, str]] = field(default_factory=list)
    kernel_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def gradient(self, layer: str) -> np.ndarray:
        """The full per-example kernel gradients of ``layer``, materialising factors if needed."""
        if layer in self.gradients:
            return self.gradients[layer]
        if layer in self.factors:
            return self.factors[layer].materialize()
        raise AttackError(f"gradient: no gradient of layer {layer!r} was extracted; "
                          f"extracted: {', '.join([*self.gradients, *self.factors]) or 'none'}")

    def total_gradient_norm(self) -> np.ndarray:
        """Norm of the per-example gradient over all layers in ``gradient_norms`` together."""
        if not self.gradient_norms:
            return np.zeros(len(self), dtype=np.float32)
        return np.sqrt(sum(np.square(v.astype(np.float64)) for v in self.gradient_norms.values()))


# ---------------------------------------------------------------------------------------------
# input checks


def check_model(model) -> int:
    """Check that ``model`` is a single-input Keras classifier; return its number of classes."""
    if not isinstance(model, keras.Model):
        raise AttackError(f"model: expected a Keras model, got {type(model).__name__}")
    if not model.built:
        raise AttackError("model: the Keras model is not built; build it (call it once or give it an Input)")
    if len(model.inputs if getattr(model, "inputs", None) else [0]) != 1:
        raise AttackError(f"model: models with {len(model.inputs)} inputs are not supported; allowed: one input")
    shape = tuple(model.output_shape) if not isinstance(model.output_shape, list) else None
    if shape is None or len(shape) != 2 or shape[1] is None or shape[1] < 2:
        raise AttackError(f"model: output shape {model.output_shape} is not (batch, classes) with classes >= 2; "
                          "allowed: a classifier whose output is one score per class")
    return int(shape[1])


def check_records(model, x, y, num_classes: int, source: str = "x") -> tuple[np.ndarray, np.ndarray]:
    """Validate records ``x`` against the model's input shape and labels ``y`` against its outputs."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise AttackError(f"{source}: records must be numeric; got dtype {x.dtype}")
    expected = tuple(model.input_shape[1:])
    got = tuple(x.shape[1:]) if x.ndim >= 1 else ()
    matches = len(got) == len(expected) and all(e is None or e == g for e, g in zip(expected, got))
    if x.ndim < 1 or not matches:
        hint = ""
        if x.ndim >= 1 and None not in expected and int(np.prod(got)) == int(np.prod(expected)):
            hint = f" (same number of values: reshape the records to (n, {', '.join(map(str, expected))}))"
        raise AttackError(f"{source}: records have shape {got} but the model takes records of shape "
                          f"{expected}{hint}")
    x = x.astype(np.float32, copy=False)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes and y.shape[0] == len(x):
        y = np.argmax(y, axis=1)  # one-hot labels
    if y.ndim != 1:
        raise AttackError(f"y: labels must be one class id per record, shape ({len(x)},), or one-hot "
                          f"({len(x)}, {num_classes}); got shape {y.shape}")
    if len(y) != len(x):
        raise AttackError(f"y: {len(y)} labels for {len(x)} records; there must be one label per record")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y)))):
        raise AttackError(f"y: labels must be integer class ids; got dtype {y.dtype} with non-integer values")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise AttackError(f"y: label {bad} does not match the model's {num_classes} outputs; "
                          f"allowed: class ids 0..{num_classes - 1}")
    return x, y


def outputs_probabilities(model) -> bool:
    """Whether the model ends in a softmax (probabilities) rather than logits."""
    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is keras.activations.softmax or getattr(activation, "__name__", "") == "softmax"


# ---------------------------------------------------------------------------------------------
# how each layer's per-example gradient is computed: fedaudit.signals.rules


def _gradient_mode(layer) -> str:
    """The name of the rule that computes ``layer``'s per-example gradient ('dense', 'conv', 'generic', ...)."""
    return rule_for(layer).name


# ---------------------------------------------------------------------------------------------
# running the model with hooks on chosen layers


def _call_inference(op, *args, **kwargs):
    if takes_training_argument(op):
        kwargs.setdefault("training", False)
    return op(*args, **kwargs)


def _run_with_hooks(model, x, hooks):
    """Run ``model`` on ``x`` in inference mode, calling ``hooks[id(layer)]`` instead of hooked layers."""
    functional = functional_graph(model)
    if functional is not None:
        def operation_fn(op):
            hook = hooks.get(id(op))
            if hook is not None:
                return hook
            return lambda *args, **kwargs: _call_inference(op, *args, **kwargs)

        out = run_through_graph(functional, x, operation_fn)
        return out[0] if isinstance(out, (list, tuple)) else out
    for layer in model.layers:  # a Sequential model without a functional graph
        hook = hooks.get(id(layer))
        x = hook(x) if hook is not None else _call_inference(layer, x)
    return x


@dataclass(frozen=True)
class _Plan:
    outputs: tuple[LayerRef, ...]
    gradients: tuple[LayerRef, ...]     # full gradients (or factors) wanted
    norms: tuple[LayerRef, ...]          # norms wanted
    factorize: bool
    probabilities: bool


def _build_step(model, plan: _Plan):
    """A tf.function (x, y) -> dict of per-example tensors for ``plan`` (see :func:`_step_fn`)."""
    spec_x = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    spec_y = tf.TensorSpec((None,), tf.int64)
    return tf.function(_step_fn(model, plan), input_signature=[spec_x, spec_y], autograph=False)


def _build_batched_step(model, plan: _Plan):
    """A tf.function (stacked weights, x, y) -> dict of per-model, per-example tensors (B, n, ...).

    ``stacked``: one tensor per entry of ``model.weights``, its B models' values stacked on a first axis; ``x``
    (B, n, ...) and ``y`` (B, n): each model's records. The model runs statelessly (its variables read from a
    ``keras.StatelessScope`` that maps them to one model's values) under ``tf.vectorized_map``, so B models cost
    one call and their matmuls run batched (a convolution whose kernel differs per model has no vectorised form:
    TensorFlow runs it model after model inside the call, which measured as fast as one grouped convolution)."""
    step = _step_fn(model, plan)
    variables = list(model.weights)

    def batched(stacked, x, y):
        def one(args):
            weights, xb, yb = args
            with keras.StatelessScope(state_mapping=list(zip(variables, weights))):
                return step(xb, yb, weights)

        return tf.vectorized_map(one, (list(stacked), x, y))

    specs = [tf.TensorSpec((None, *v.shape), tf.as_dtype(v.dtype)) for v in variables]
    spec_x = tf.TensorSpec((None, None, *model.input_shape[1:]), tf.float32)
    spec_y = tf.TensorSpec((None, None), tf.int64)
    return tf.function(batched, input_signature=[specs, spec_x, spec_y], autograph=False)


def _step_fn(model, plan: _Plan):
    """The Python function (x, y[, weights]) -> dict of per-example tensors for ``plan``.

    Each gradient layer's rule (:func:`fedaudit.signals.rules.rule_for`) either replaces the layer's call to
    record its input and the tensor whose gradient it needs (one backward pass serves them all), or, for the
    generic rule, differentiates the per-example losses (a persistent tape, one Jacobian per layer)."""
    grad_layers = {ref.name: ref for ref in (*plan.gradients, *plan.norms)}
    rules = {name: rule_for(ref.layer) for name, ref in grad_layers.items()}
    want_grad = {ref.name for ref in plan.gradients}
    want_norm = {ref.name for ref in plan.norms}
    output_names = {ref.name for ref in plan.outputs}
    hooked = {id(ref.layer): ref for ref in (*plan.outputs, *grad_layers.values())}
    needs_jacobian = any(not rule.records for rule in rules.values())
    probabilities = plan.probabilities
    logger.debug("signal step: %s", ", ".join(f"{name}: {rule.name}" for name, rule in rules.items()) or "no rules")

    def step(x, y, weights=()):
        record_in, record_z, outputs = {}, {}, {}
        with tf.GradientTape(persistent=needs_jacobian) as tape:
            # the values a StatelessScope maps the variables to, watched as variables are: the tape then records
            # the ops a pre-activation output feeds before the hook watches it
            tape.watch(list(weights))
            def make_hook(ref):
                layer, name = ref.layer, ref.name

                def hook(*args, **kwargs):
                    rule = rules.get(name)
                    if rule is not None and rule.records:
                        saved, z, out = rule.forward(layer, *args, **kwargs)
                        tape.watch(z)
                        record_in[name], record_z[name] = saved, z
                    else:
                        out = _call_inference(layer, *args, **kwargs)
                    if name in output_names:
                        outputs[name] = out
                    return out

                return hook

            hooks = {key: make_hook(ref) for key, ref in hooked.items()}
            out = _run_with_hooks(model, x, hooks)
            out = tf.cast(out, tf.float32)
            logits = tf.math.log(tf.clip_by_value(out, 1e-30, 1.0)) if probabilities else out
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            total = tf.reduce_sum(losses)
        result = {"logits": logits, "loss": losses}
        for ref in plan.outputs:  # an InputLayer is never called: its output is the input
            result[f"out/{ref.name}"] = outputs[ref.name] if ref.name in outputs else x
        z_names = [name for name in record_z]
        dzs = tape.gradient(total, [record_z[name] for name in z_names]) if z_names else []
        for name, dz in zip(z_names, dzs):
            layer, rule, saved = grad_layers[name].layer, rules[name], record_in[name]
            if dz is None:
                dz = tf.zeros_like(record_z[name])
            factors = rule.factors(layer, saved, dz)
            if factors is not None:  # materialised, when asked, straight into the output array
                if name in want_norm:
                    result[f"norm/{name}"] = rule.norms(layer, saved, dz)
                if name in want_grad:
                    result[f"a/{name}"], result[f"d/{name}"] = factors
                continue
            grad = rule.gradients(layer, saved, dz) if name in want_grad else None   # a norm may not need it
            if name in want_grad:
                result[f"g/{name}"] = grad
            if name in want_norm:
                result[f"norm/{name}"] = rule.norms(layer, saved, dz, grad)
        for name, rule in rules.items():
            if rule.records:
                continue
            grad = rule.from_losses(grad_layers[name].layer, tape, losses)
            if name in want_grad:
                result[f"g/{name}"] = grad
            if name in want_norm:
                result[f"norm/{name}"] = flat_norms(grad)
        if needs_jacobian:
            del tape
        return result

    return step


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _step_for(model, plan: _Plan, batched: bool = False):
    """The compiled step for (model, plan), cached while the model lives (tracing costs ~1 s; the batched
    step's, several)."""
    key = (tuple(r.name for r in plan.outputs), tuple(r.name for r in plan.gradients),
           tuple(r.name for r in plan.norms), plan.factorize, plan.probabilities, batched)
    per_model = _STEPS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = _build_batched_step(model, plan) if batched else _build_step(model, plan)
    return per_model[key]


def _per_example_floats(model, plan: _Plan, num_classes: int) -> int:
    """Rough floats one example occupies in a chunk's outputs and largest intermediates."""
    total = 2 * num_classes + 1
    for ref in plan.outputs:
        shape = ref.layer.output.shape if hasattr(ref.layer, "output") else None
        total += int(np.prod([d for d in shape[1:] if d])) if shape is not None else 0
    for ref in {r.name: r for r in (*plan.gradients, *plan.norms)}.values():
        total += rule_for(ref.layer).floats_per_example(ref.layer)
    return total


def auto_batch_size(model, plan: _Plan, num_classes: int) -> int:
    """Examples per chunk so that a chunk stays within :data:`CHUNK_BUDGET` floats."""
    per_example = max(_per_example_floats(model, plan, num_classes), 1)
    return int(min(MAX_CHUNK, max(1, CHUNK_BUDGET // per_example)))


def _resolve_plan(model, layers, gradients, gradient_norms, factorize, from_logits, layers_option,
                  gradients_option) -> _Plan:
    """The layers :func:`extract` (or :func:`extract_many`) computes, checked against the model."""
    outputs = resolve_output_layers(model, layers, layers_option)
    grads = resolve_gradient_layers(model, gradients, gradients_option, other_weights=weight_of)
    if gradient_norms is True:
        norms = grads if grads else resolve_gradient_layers(
            model, list(range(1, len([r for r in model.layers if kernel_of(r) is not None]) + 1)))
    elif gradient_norms is False or gradient_norms is None:
        norms = []
    else:
        norms = resolve_gradient_layers(model, gradient_norms, "gradient_norms", other_weights=weight_of)
    probabilities = outputs_probabilities(model) if from_logits is None else not from_logits
    return _Plan(tuple(outputs), tuple(grads), tuple(norms), bool(factorize), bool(probabilities))


def _signals(plan: _Plan, model, y, arrays: dict, logits: bool = True, loss: bool = True) -> Signals:
    """One model's :class:`Signals` from its arrays (the step's keys, first axis the examples)."""
    signals = Signals(
        labels=y,
        logits=arrays["logits"] if logits else None,
        loss=arrays["loss"] if loss else None,
        output_layers=[(r.index, r.name) for r in plan.outputs],
        gradient_layers=[(r.index, r.name) for r in plan.gradients],
        kernel_shapes={r.name: tuple(int(d) for d in weight_of(r.layer).shape)
                       for r in (*plan.gradients, *plan.norms)},
    )
    for ref in plan.outputs:
        signals.layer_outputs[ref.name] = arrays[f"out/{ref.name}"]
    for ref in plan.gradients:
        if f"a/{ref.name}" in arrays:
            signals.factors[ref.name] = DenseFactors(arrays[f"a/{ref.name}"], arrays[f"d/{ref.name}"])
        else:
            signals.gradients[ref.name] = arrays[f"g/{ref.name}"]
    for ref in plan.norms:
        signals.gradient_norms[ref.name] = arrays[f"norm/{ref.name}"]
    return signals


#: most models one batched call evaluates (their rows share a chunk's float budget)
MAX_MODELS_PER_CALL = 32


def extract_many(model, weights_list, x, y, *, layers=(), gradients=(), gradient_norms=True,
                 from_logits: bool | None = None, layers_option: str = "layers",
                 gradients_option: str = "gradients") -> list[Signals]:
    """:func:`extract` (with ``factorize=True``) for each of B weight lists (``model.get_weights()`` order) of
    ``model``'s architecture, several models per call: the weights are stacked and the model runs under
    ``tf.vectorized_map`` (:func:`_build_batched_step`), so a round of client models costs a few calls rather
    than one per model. ``x`` (n, ...) and ``y`` (n,): records every model scores; or lists of B arrays, each
    model its own records (padded to the longest in a call). The model's own variables are neither read nor
    changed. Same arguments and errors as :func:`extract`; the result equals B calls of it to float tolerance."""
    num_classes = check_model(model)
    if isinstance(x, (list, tuple)):
        pairs = [check_records(model, xi, yi, num_classes) for xi, yi in zip(x, y)]
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        x, y = check_records(model, x, y, num_classes)
        xs, ys = [x] * len(weights_list), [y] * len(weights_list)
    if len(xs) != len(weights_list):
        raise AttackError(f"x: {len(xs)} record sets for {len(weights_list)} models; allowed: one per model, or "
                          "one array every model scores")
    plan = _resolve_plan(model, layers, gradients, gradient_norms, True, from_logits, layers_option,
                         gradients_option)
    rows = max([len(v) for v in ys] + [1])
    per_example = max(_per_example_floats(model, plan, num_classes), 1)
    chunk = int(min(MAX_CHUNK, rows, max(1, CHUNK_BUDGET // per_example)))
    per_call = int(max(1, min(MAX_MODELS_PER_CALL, CHUNK_BUDGET // (per_example * chunk))))
    step = _step_for(model, plan, batched=True)
    out = []
    for first in range(0, len(weights_list), per_call):
        group = list(range(first, min(len(weights_list), first + per_call)))
        # a lone model runs beside a copy of itself: under tf.vectorized_map with one model, TensorFlow's
        # vectorised bias add of a convolution fails ("Incompatible shapes: [16,1,1,1] vs. [1,n,8,8,16]")
        slots = group if len(group) > 1 else group * 2
        stacked = [tf.constant(np.stack([np.asarray(weights_list[b][i], dtype=v.dtype) for b in slots]))
                   for i, v in enumerate(model.weights)]
        n = max([len(ys[b]) for b in group] + [1])      # one padding row when no model has records
        arrays: dict = {}
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            xb = np.zeros((len(slots), stop - start, *xs[group[0]].shape[1:]), dtype=np.float32)
            yb = np.zeros((len(slots), stop - start), dtype=np.int64)
            for j, b in enumerate(slots):         # padding rows (label 0) are dropped below
                m = max(0, min(len(ys[b]), stop) - start)
                xb[j, :m], yb[j, :m] = xs[b][start:start + m], ys[b][start:start + m]
            for key, value in step(stacked, tf.constant(xb), tf.constant(yb)).items():
                value = value.numpy()
                if key not in arrays:
                    arrays[key] = np.empty((len(slots), n, *value.shape[2:]), dtype=value.dtype)
                arrays[key][:, start:stop] = value
        for j, b in enumerate(group):
            m = len(ys[b])
            out.append(_signals(plan, model, ys[b], {k: v[j, :m] for k, v in arrays.items()}))
    return out


# ---------------------------------------------------------------------------------------------
# the public entry point


def extract(model, x, y, *, layers=(), gradients=(), loss: bool = True, logits: bool = True,
            gradient_norms=True, factorize: bool = False, batch_size: int | None = None,
            from_logits: bool | None = None, layers_option: str = "layers",
            gradients_option: str = "gradients") -> Signals:
    """Per-example signals of ``model`` on records ``x`` with labels ``y``.

    Args:
        layers: layers whose outputs to return, by 1-based index into ``model.layers`` or by name.
        gradients: layers whose per-example kernel gradients to return, by 1-based index among the
            layers that have a kernel (ML Privacy Meter's counting) or by name; a name may also pick a
            layer without a kernel whose rule takes another weight (an Embedding's matrix, a
            normalisation layer's scale).
        loss, logits: return per-example cross-entropy loss and logits.
        gradient_norms: True for the norm of every layer in ``gradients`` (of every layer with a
            kernel when ``gradients`` is empty), False for none, or a list of layers.
        factorize: return dense layers' gradients as :class:`DenseFactors` (in ``Signals.factors``)
            instead of materialising (n, in, out) arrays; convolutional gradients are always full.
        batch_size: examples per chunk; None sizes chunks to bound memory (about 256 MB).
        from_logits: whether the model outputs logits; None detects a final softmax.
        layers_option, gradients_option: the names error messages use for ``layers``/``gradients``.

    Raises:
        AttackError: a layer out of range or without a kernel, labels that do not match the model's
            outputs, records whose shape does not match the model's input.
    """
    num_classes = check_model(model)
    x, y = check_records(model, x, y, num_classes)
    plan = _resolve_plan(model, layers, gradients, gradient_norms, factorize, from_logits, layers_option,
                         gradients_option)
    grads = plan.gradients
    if batch_size is None:
        batch_size = auto_batch_size(model, plan, num_classes)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise AttackError(f"batch_size: must be a positive integer or None (automatic); got {batch_size!r}")
    if not len(x):
        raise AttackError("x: no records; signals need at least one")
    step = _step_for(model, plan)
    arrays: dict[str, np.ndarray] = {}
    for start in range(0, len(x), int(batch_size)):
        result = step(tf.constant(x[start:start + batch_size]), tf.constant(y[start:start + batch_size]))
        result = {key: value.numpy() for key, value in result.items()}
        if not plan.factorize:  # dense gradients: the outer product of the factors, written in place
            for ref in grads:
                if f"a/{ref.name}" in result:
                    a, d = result.pop(f"a/{ref.name}"), result.pop(f"d/{ref.name}")
                    key = f"g/{ref.name}"
                    if key not in arrays:
                        arrays[key] = np.empty((len(x), a.shape[1], d.shape[1]), dtype=np.float32)
                    np.multiply(a[:, :, None], d[:, None, :], out=arrays[key][start:start + len(a)])
        for key, value in result.items():
            if key not in arrays:  # filled chunk by chunk: no second copy of large arrays
                arrays[key] = np.empty((len(x), *value.shape[1:]), dtype=value.dtype)
            arrays[key][start:start + len(value)] = value
    return _signals(plan, model, y, arrays, logits=logits, loss=loss)


__all__ = ["Signals", "DenseFactors", "extract", "extract_many", "check_model", "check_records", "outputs_probabilities",
           "auto_batch_size", "CHUNK_BUDGET"]
