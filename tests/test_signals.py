"""fedaudit.signals.extract against a plain per-example GradientTape, and its input checks."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from fedaudit.errors import AttackError, FedAuditError  # noqa: E402
from fedaudit.models import build_model  # noqa: E402
from fedaudit.signals import extract, kernel_layers  # noqa: E402

L = keras.layers


def per_example_tape(model, x, y, layers, from_logits=True):
    """The old tool's way: one GradientTape per example; kernel gradients of ``layers``."""
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            pred = model(x[i:i + 1], training=False)
            loss = keras.losses.sparse_categorical_crossentropy(y[i:i + 1], pred, from_logits=from_logits)
        out.append([g.numpy() for g in tape.gradient(loss, [layer.kernel for layer in layers])])
    return [np.stack([o[j] for o in out]) for j in range(len(layers))]


def assert_rel_close(got, want, rel=1e-5):
    scale = max(float(np.abs(want).max()), 1e-12)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= rel * scale, float(np.abs(got - want).max()) / scale


@pytest.fixture(scope="module")
def cnn():
    model = build_model("cnn", (8, 8, 1), 5, seed=1)
    rng = np.random.default_rng(0)
    x = rng.random((13, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 5, 13)
    return model, x, y


def test_dense_and_conv_gradients_match_per_example_tape(cnn):
    model, x, y = cnn
    kernels = kernel_layers(model)  # conv_1, conv_2, dense, logits
    assert [k.name for k in kernels] == ["conv_1", "conv_2", "dense", "logits"]
    sig = extract(model, x, y, gradients=[1, 2, 3, 4], batch_size=5)  # chunks of 5, 5, 3
    want = per_example_tape(model, x, y, kernels)
    for layer, g in zip(kernels, want):
        assert_rel_close(sig.gradients[layer.name], g)
        norms = np.linalg.norm(g.reshape(len(g), -1), axis=1)
        np.testing.assert_allclose(sig.gradient_norms[layer.name], norms, rtol=1e-5)
    logits = model(x, training=False).numpy()
    np.testing.assert_allclose(sig.logits, logits, rtol=1e-5, atol=1e-6)
    want_loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True).numpy()
    np.testing.assert_allclose(sig.loss, want_loss, rtol=1e-5, atol=1e-7)


def test_factors_give_the_same_gradients_and_norms(cnn):
    model, x, y = cnn
    full = extract(model, x, y, gradients=["dense", "logits", "conv_2"])
    fact = extract(model, x, y, gradients=["dense", "logits", "conv_2"], factorize=True)
    assert set(fact.factors) == {"dense", "logits"} and set(fact.gradients) == {"conv_2"}
    assert fact.factors["dense"].inputs.shape == (13, 128) and fact.factors["dense"].output_grads.shape == (13, 64)
    for name in ("dense", "logits"):
        assert_rel_close(fact.gradient(name), full.gradients[name])
        np.testing.assert_allclose(fact.gradient_norms[name], full.gradient_norms[name], rtol=1e-5)
        np.testing.assert_allclose(fact.factors[name].norms(), full.gradient_norms[name], rtol=1e-5)


def test_conv_norms_alone_match_the_gradients_norms(cnn):
    """Norms without the gradients: a convolution's from its patches' and output gradients' Gram matrices where
    that is cheaper (conv_2's 4x4 map), from the gradient otherwise (conv_1's 8x8); strided, dilated and 1-D too."""
    from fedaudit.signals.rules.conv import ghost_norms_cheaper

    model, x, y = cnn
    assert not ghost_norms_cheaper(64, 9, 16) and ghost_norms_cheaper(16, 144, 32)   # conv_1, conv_2
    norms = extract(model, x, y, gradient_norms=["conv_1", "conv_2"], batch_size=5)
    assert norms.gradients == {}
    for layer, g in zip(kernel_layers(model)[:2], per_example_tape(model, x, y, kernel_layers(model)[:2])):
        np.testing.assert_allclose(norms.gradient_norms[layer.name], np.linalg.norm(g.reshape(len(g), -1), axis=1),
                                   rtol=2e-5)
    rng = np.random.default_rng(5)
    image = keras.Sequential([keras.Input((9, 9, 3)), L.Conv2D(24, 3, strides=2, padding="same", name="s"),
                              L.Conv2D(32, 2, dilation_rate=2, activation="relu", name="d"), L.Flatten(),
                              L.Dense(3, name="o")])
    line = keras.Sequential([keras.Input((6, 8)), L.Conv1D(16, 3, padding="causal", name="c"), L.Flatten(),
                             L.Dense(3, name="o")])
    for model, shape, names in ((image, (9, 9, 3), ["s", "d"]), (line, (6, 8), ["c"])):
        x = rng.normal(size=(6, *shape)).astype(np.float32)
        y = rng.integers(0, 3, 6)
        layers = [model.get_layer(n) for n in names]
        assert any(ghost_norms_cheaper(int(np.prod(l.output.shape[1:-1])), int(np.prod(l.kernel.shape[:-1])),
                                       l.kernel.shape[-1]) for l in layers)
        got = extract(model, x, y, gradient_norms=names)
        for layer, g in zip(layers, per_example_tape(model, x, y, layers)):
            np.testing.assert_allclose(got.gradient_norms[layer.name],
                                       np.linalg.norm(g.reshape(len(g), -1), axis=1), rtol=2e-5)


def test_layer_outputs_by_index_and_name(cnn):
    model, x, y = cnn
    sig = extract(model, x, y, layers=[1, "pool_2", len(model.layers)], gradients=(), gradient_norms=False)
    assert [name for _, name in sig.output_layers] == ["conv_1", "pool_2", "logits"]
    for name in ("conv_1", "pool_2"):
        sub = keras.Model(model.inputs, model.get_layer(name).output)
        np.testing.assert_allclose(sig.layer_outputs[name], sub([x]).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sig.layer_outputs["logits"], sig.logits, rtol=1e-6)
    assert sig.gradient_norms == {}


def test_batchnorm_no_bias_softmax_and_strided_convs():
    """The old tool indexed kernels as variables[(g-1)*2]: wrong with BatchNormalization or no bias."""
    rng = np.random.default_rng(3)
    inp = keras.Input((9, 9, 2))
    h = L.Conv2D(4, 3, strides=2, padding="same", use_bias=False, name="c1")(inp)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.Activation("relu")(h)
    h = L.Conv2D(3, 2, dilation_rate=2, padding="valid", activation="tanh", name="c2")(h)
    h = L.Flatten()(h)
    h = L.Dense(7, use_bias=False, name="d1")(h)
    h = L.BatchNormalization(name="bn2")(h)
    out = L.Dense(4, activation="softmax", name="out")(h)
    model = keras.Model(inp, out)
    for layer in model.layers:  # moving statistics away from 0 / 1 so that they matter
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))
    x = rng.normal(size=(7, 9, 9, 2)).astype(np.float32)
    y = rng.integers(0, 4, 7)
    kernels = kernel_layers(model)
    assert [k.name for k in kernels] == ["c1", "c2", "d1", "out"]
    sig = extract(model, x, y, gradients=["c1", "c2", 3, 4])
    want = per_example_tape(model, x, y, kernels, from_logits=False)
    for layer, g in zip(kernels, want):
        assert_rel_close(sig.gradient(layer.name), g)
    probs = model(x).numpy()
    np.testing.assert_allclose(sig.loss, -np.log(probs[np.arange(7), y]), rtol=1e-5)


def test_conv1d_causal_and_generic_kernel_layer():
    rng = np.random.default_rng(4)
    model = keras.Sequential([keras.Input((10, 3)), L.Conv1D(4, 3, padding="causal", activation="relu", name="c"),
                              L.Conv1D(2, 2, strides=2, name="s"), L.Flatten(),
                              L.Dense(3, name="d")])
    x = rng.normal(size=(6, 10, 3)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    sig = extract(model, x, y, gradients=["c", "s", "d"])
    for layer, g in zip(kernel_layers(model), per_example_tape(model, x, y, kernel_layers(model))):
        assert_rel_close(sig.gradients[layer.name], g)
    image = keras.Sequential([keras.Input((6, 6, 2)), L.DepthwiseConv2D(3, name="dw"), L.Flatten(), L.Dense(3)])
    xi = rng.normal(size=(5, 6, 6, 2)).astype(np.float32)
    sig = extract(image, xi, y[:5], gradients=["dw"])  # falls back to a vectorised Jacobian
    assert_rel_close(sig.gradients["dw"], per_example_tape(image, xi, y[:5], [image.get_layer("dw")])[0])


def test_default_gradient_norms_cover_every_kernel_layer(cnn):
    model, x, y = cnn
    sig = extract(model, x, y)
    assert set(sig.gradient_norms) == {"conv_1", "conv_2", "dense", "logits"}
    assert sig.gradients == {} and sig.factors == {}
    assert np.all(sig.total_gradient_norm() >= sig.gradient_norms["logits"])


@pytest.mark.parametrize("kwargs, words", [
    (dict(layers=[8]), ["layers", "out of range", "1..7"]),
    (dict(layers=["nope"]), ["no layer named 'nope'"]),
    (dict(gradients=[5]), ["gradients", "out of range", "1..4", "conv_1"]),
    (dict(gradients=["pool_1"]), ["pool_1", "no kernel", "1..4"]),
])
def test_bad_layers_name_what_is_allowed(cnn, kwargs, words):
    model, x, y = cnn
    with pytest.raises(AttackError) as info:
        extract(model, x, y, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_bad_records_and_labels(cnn):
    model, x, y = cnn
    with pytest.raises(AttackError, match=r"labels?.*allowed: class ids 0\.\.4"):
        extract(model, x, np.r_[y[:-1], 5])
    with pytest.raises(AttackError, match=r"13 records"):
        extract(model, x, y[:-1])
    with pytest.raises(AttackError, match=r"shape \(64,\).*\(8, 8, 1\).*reshape"):
        extract(model, x.reshape(13, 64), y)
    with pytest.raises(FedAuditError, match="integer"):
        extract(model, x, y + 0.5)
    one_hot = np.eye(5)[y]
    np.testing.assert_allclose(extract(model, x, one_hot).loss, extract(model, x, y).loss)
