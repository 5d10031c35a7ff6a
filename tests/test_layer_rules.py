"""Each per-layer gradient rule against a per-example GradientTape, the NumPy half against TensorFlow, and a
rule registered for a new layer type being used by extraction."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from fedaudit.signals import extract  # noqa: E402
from fedaudit.signals.rules import LayerRule, register, registered, rule_for, unregister, weight_of  # noqa: E402

L = keras.layers
N = 5


def per_example_tape(model, x, y, weight):
    """Gradients of each example's own loss with respect to ``weight``, one tape per example."""
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            logits = model(x[i:i + 1], training=False)
            loss = keras.losses.sparse_categorical_crossentropy(y[i:i + 1], logits, from_logits=True)
        out.append(tf.convert_to_tensor(tape.gradient(loss, weight)).numpy())  # IndexedSlices for embeddings
    return np.stack(out)


def _randomize_statistics(model, rng):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))
        for name in ("gamma", "beta"):
            if getattr(layer, name, None) is not None:
                getattr(layer, name).assign(rng.normal(size=getattr(layer, name).shape))


def _model(kind, rng):
    """A tiny model with one layer ``"probe"`` of ``kind``; its records."""
    keras.utils.set_random_seed(0)
    if kind == "dense":
        layers, shape = [L.Dense(4, activation="tanh", name="probe"), L.Dense(3)], (6,)
    elif kind == "dense-rank3":
        layers, shape = [L.Dense(4, activation="relu", name="probe"), L.Flatten(), L.Dense(3)], (3, 5)
    elif kind == "conv1d":
        layers, shape = [L.Conv1D(3, 3, padding="causal", activation="relu", name="probe"), L.Flatten(),
                         L.Dense(3)], (7, 2)
    elif kind == "conv2d":
        layers, shape = [L.Conv2D(3, 2, strides=2, padding="same", name="probe"), L.Flatten(), L.Dense(3)], (5, 5, 2)
    elif kind == "embedding":
        layers, shape = [L.Embedding(5, 3, name="probe"), L.Flatten(), L.Dense(3)], (6,)
    elif kind == "batchnorm":
        layers, shape = [L.Conv2D(2, 2, name="c"), L.BatchNormalization(name="probe"), L.Activation("relu"),
                         L.Flatten(), L.Dense(3)], (4, 4, 2)
    elif kind == "layernorm":
        layers, shape = [L.Dense(4, name="d"), L.LayerNormalization(name="probe"), L.Flatten(), L.Dense(3)], (3, 5)
    elif kind == "layernorm-beta":
        layers, shape = [L.Dense(4, name="d"), L.LayerNormalization(scale=False, name="probe"), L.Dense(3)], (5,)
    elif kind == "generic":
        layers, shape = [L.DepthwiseConv2D(2, name="probe"), L.Flatten(), L.Dense(3)], (4, 4, 2)
    else:
        raise ValueError(kind)
    model = keras.Sequential([keras.Input(shape), *layers])
    _randomize_statistics(model, rng)
    if kind == "embedding":
        x = rng.integers(0, 5, (N, *shape)).astype(np.float32)  # ids repeat within an example
    else:
        x = rng.normal(size=(N, *shape)).astype(np.float32)
    return model, x, rng.integers(0, 3, N)


#: case -> the rule that takes its layer (Keras's Conv1D overrides ``call`` for causal padding: the generic rule)
CASES = {"dense": "dense", "dense-rank3": "dense", "conv1d": "generic", "conv2d": "conv", "embedding": "embedding",
         "batchnorm": "batchnorm", "layernorm": "layernorm", "layernorm-beta": "layernorm", "generic": "generic"}


def test_every_registered_rule_has_a_case():
    names = {rule.name for rule in registered().values()}
    assert names <= set(CASES.values()), f"rules without a test case: {names - set(CASES.values())}"


@pytest.mark.parametrize("kind", list(CASES))
def test_rule_matches_per_example_tape(kind):
    rng = np.random.default_rng(list(CASES).index(kind))
    model, x, y = _model(kind, rng)
    layer = model.get_layer("probe")
    assert rule_for(layer).name == CASES[kind]
    sig = extract(model, x, y, gradients=["probe"], gradient_norms=["probe"], from_logits=True)
    want = per_example_tape(model, x, y, weight_of(layer))
    got = sig.gradient("probe")
    assert got.shape == want.shape == (N, *weight_of(layer).shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    np.testing.assert_allclose(sig.gradient_norms["probe"], np.linalg.norm(want.reshape(N, -1), axis=1),
                               rtol=1e-4)
    assert sig.kernel_shapes["probe"] == tuple(weight_of(layer).shape)
    np.testing.assert_allclose(sig.logits, model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_numpy_half_equals_tensorflow_for_dense():
    from fedaudit.auditor.dense import DenseProbe, describe_dense

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), L.Dense(5, activation="relu", name="h1"),
                              L.Dense(4, activation="sigmoid", name="h2"), L.Dense(3, name="out")])
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N, 6)).astype(np.float32)
    y = rng.integers(0, 3, N)
    stack = describe_dense(model)
    assert stack is not None and [l.rule for l in stack.layers] == ["dense"] * 3
    assert rule_for(model.get_layer("h1")).numpy.name == "dense"
    probe = DenseProbe(stack)
    logits, factors, _ = probe._passes(probe._stacked([model.get_weights()]), x, y)
    sig = extract(model, x, y, gradients=["h1", "h2", "out"], factorize=True, from_logits=True)
    np.testing.assert_allclose(logits[0], sig.logits, rtol=1e-5, atol=1e-6)
    for name in ("h1", "h2", "out"):
        a, d = factors[name]
        np.testing.assert_allclose(np.broadcast_to(a, (1, *a.shape[-2:]))[0], sig.factors[name].inputs,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(d[0], sig.factors[name].output_grads, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(probe.rules[name].norms(a, d)[0], sig.gradient_norms[name], rtol=1e-4)


class Doubled(L.Dense):
    """A Dense layer whose pre-activation output is twice the usual one (a layer type with no rule yet)."""

    def call(self, inputs):
        return self.activation(2.0 * (inputs @ self.kernel) + self.bias)


def test_a_registered_rule_for_a_new_layer_type_is_used_by_extraction():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), Doubled(3, activation="tanh", name="probe"), L.Dense(3)])
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    y = rng.integers(0, 3, N)
    layer = model.get_layer("probe")
    assert rule_for(layer).name == "generic"        # Dense's rule declines a subclass with its own call
    calls = []

    @register(Doubled)
    class DoubledRule(LayerRule):
        name = "doubled"

        def weight(self, layer):
            return layer.kernel

        def forward(self, layer, inputs, *args, **kwargs):
            z = 2.0 * tf.matmul(inputs, layer.kernel) + layer.bias
            return inputs, z, layer.activation(z)

        def gradients(self, layer, saved, dz):
            calls.append(layer.name)
            return 2.0 * tf.einsum("bi,bo->bio", saved, dz)

    try:
        assert rule_for(layer).name == "doubled"
        sig = extract(model, x, y, gradients=["probe"], from_logits=True)
        assert calls == ["probe"]                   # traced once, through the new rule
        want = per_example_tape(model, x, y, layer.kernel)
        np.testing.assert_allclose(sig.gradients["probe"], want, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(sig.gradient_norms["probe"], np.linalg.norm(want.reshape(N, -1), axis=1),
                                   rtol=1e-4)
    finally:
        unregister(Doubled)
    assert rule_for(layer).name == "generic"


def test_numpy_halves_load_without_tensorflow():
    """The auditor's NumPy path runs the rules' NumPy halves in processes that never import TensorFlow."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; import fedaudit.auditor.dense, fedaudit.signals.numpy_rules as n; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules), n.numpy_rule('dense').name)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] dense"
