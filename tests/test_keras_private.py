"""The Keras internals of fedaudit.signals.keras_private, as the signal extractor uses them. A failure here means
the installed Keras moved or changed one: the message names it."""

import inspect

import keras
import numpy as np

from fedaudit.signals import keras_private as kp

CHANGED = f"Keras {keras.__version__} changed an internal fedaudit relies on: "


def test_base_conv_is_the_base_of_the_convolutions_and_convolves_without_bias():
    for cls in (keras.layers.Conv1D, keras.layers.Conv2D):
        assert issubclass(cls, kp.BaseConv), CHANGED + f"{cls.__name__} no longer derives from BaseConv"
        assert cls.convolution_op is kp.BaseConv.convolution_op, CHANGED + f"{cls.__name__} overrides convolution_op"
    # Conv2D runs BaseConv.call: the extractor's fast per-example gradient (Conv1D has its own call: the generic path)
    assert keras.layers.Conv2D.call is kp.BaseConv.call, CHANGED + "Conv2D overrides BaseConv.call"
    layer = keras.layers.Conv2D(3, 2, use_bias=True, bias_initializer="ones")
    x = np.random.default_rng(0).random((2, 5, 5, 1)).astype("float32")
    out = np.asarray(layer(x))
    z = np.asarray(layer.convolution_op(x, layer.kernel))
    assert np.allclose(z + 1.0, out, atol=1e-6), CHANGED + "BaseConv.convolution_op is not the bare convolution"
    for attr in ("rank", "data_format", "groups", "kernel_size", "strides", "dilation_rate", "padding", "use_bias"):
        assert hasattr(layer, attr), CHANGED + f"convolution layers have no .{attr}"


def _models():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, activation="relu", name="hidden")(inputs)
    functional = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.Dropout(0.5)(hidden)))
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu", name="hidden"),
                                   keras.layers.Dropout(0.5), keras.layers.Dense(2, name="out")])
    return functional, sequential


def test_functional_graph_of_functional_and_sequential_models():
    functional, sequential = _models()
    assert kp.functional_graph(functional) is functional
    graph = kp.functional_graph(sequential)
    assert isinstance(graph, kp.Functional), CHANGED + "a built Sequential has no ._functional graph"

    class Sub(keras.Model):
        def call(self, x):
            return x

    assert kp.functional_graph(Sub()) is None


def test_run_through_graph_calls_operation_fn_for_each_operation():
    params = inspect.signature(kp.Functional._run_through_graph).parameters
    assert "operation_fn" in params, CHANGED + "Functional._run_through_graph takes no operation_fn"
    x = np.random.default_rng(1).random((5, 4)).astype("float32")
    for model in _models():
        graph = kp.functional_graph(model)
        seen = []

        def plain(op):
            seen.append(op.name)
            return lambda *a, **k: op(*a, **{**k, "training": False} if kp.takes_training_argument(op) else k)

        out = kp.run_through_graph(graph, x, plain)
        out = out[0] if isinstance(out, (list, tuple)) else out
        assert np.allclose(np.asarray(out), np.asarray(model(x, training=False)), atol=1e-6), \
            CHANGED + "_run_through_graph with a pass-through operation_fn does not give the model's output"
        assert {"hidden", "out"} <= set(seen), CHANGED + f"operation_fn saw only {seen}"

        def hooked(op):     # replacing one layer's output must change what the graph returns
            if op.name == "hidden":
                return lambda *a, **k: keras.ops.zeros((x.shape[0], 3))
            return plain(op)

        out = kp.run_through_graph(graph, x, hooked)
        out = out[0] if isinstance(out, (list, tuple)) else out
        bias = np.asarray(model.get_layer("out").bias)
        assert np.allclose(np.asarray(out), bias, atol=1e-6), CHANGED + "operation_fn's result is not used"


def test_layers_say_whether_call_takes_training():
    for layer in (keras.layers.Dropout(0.5), keras.layers.BatchNormalization()):
        assert hasattr(layer, "_call_has_training_arg") or hasattr(layer, "_call_context_args"), \
            CHANGED + "layers no longer record whether call takes training"
        assert kp.takes_training_argument(layer), CHANGED + f"{type(layer).__name__} does not take training"


def test_installed_versions_are_within_the_bounds_of_pyproject():
    """The suite runs against the versions pyproject.toml allows (its upper bounds are the newest tested)."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    from conftest import REPO

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bounded = {Requirement(d).name: Requirement(d) for d in deps}
    for name in ("tensorflow", "keras", "flwr", "ray"):
        req = bounded[name]
        assert any(spec.operator == "<" for spec in req.specifier), f"{name}: no upper bound in pyproject.toml"
        assert req.specifier.contains(version(name)), f"{name} {version(name)} is outside {req.specifier}"
