"""Keras model builders by name. Every model ends in logits (no softmax).

Importing this module imports no TensorFlow (each builder imports Keras when it runs), so a scenario's model
name and options are checked (:func:`check_model`) before TensorFlow starts.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Callable

from fedaudit.errors import ModelError

if TYPE_CHECKING:
    import keras

MODELS: dict[str, Callable[..., keras.Model]] = {}


def register_model(name: str):
    """Decorator: register a builder ``f(input_shape, num_classes, seed, **options) -> keras.Model``."""

    def wrap(builder):
        MODELS[name] = builder
        return builder

    return wrap


def _load_builtin() -> None:
    """Import the built-in models defined outside this module (each registers itself): ``keras-file``."""
    from fedaudit.models import keras_file  # noqa: F401


def check_model(name: str, options: dict | None = None) -> Callable:
    """The builder registered as ``name``, after checking ``options`` against its parameters (no TensorFlow)."""
    _load_builtin()
    if name not in MODELS:
        raise ModelError(f"model: unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    builder = MODELS[name]
    parameters = inspect.signature(builder).parameters
    allowed = [p for p in parameters if p not in ("input_shape", "num_classes", "seed")]
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise ModelError(
            f"model.{unknown[0]}: unknown option for model {name!r}; allowed: {', '.join(allowed) or 'none'}"
        )
    missing = [p for p in allowed if parameters[p].default is inspect.Parameter.empty and p not in (options or {})]
    if missing:
        raise ModelError(f"model.{missing[0]}: model {name!r} needs this option; its options: {', '.join(allowed)}")
    return builder


def build_model(name: str, input_shape, num_classes: int, seed: int = 0, **options) -> keras.Model:
    """Build the registered model ``name`` for inputs of ``input_shape`` and ``num_classes`` outputs."""
    builder = check_model(name, options)
    if int(num_classes) < 2:
        raise ModelError(f"model: num_classes must be at least 2, got {num_classes}")
    return builder(tuple(int(d) for d in input_shape), int(num_classes), int(seed), **options)


def _init(kind: str, seed: int, index: int):
    import keras

    if kind == "normal":
        return keras.initializers.RandomNormal(stddev=0.01, seed=seed * 1000 + index)
    return keras.initializers.GlorotUniform(seed=seed * 1000 + index)


def _flat_input(input_shape, name):
    import keras

    layers = [keras.Input(shape=input_shape)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten(name=f"{name}_flatten"))
    return layers


@register_model("mlp")
def mlp(input_shape, num_classes, seed, hidden=(128, 64), activation="relu"):
    """A multilayer perceptron with the given hidden widths."""
    import keras

    hidden = [int(h) for h in hidden]
    if not hidden or min(hidden) < 1:
        raise ModelError(f"model.hidden: must be a non-empty list of positive widths, got {hidden}")
    layers = _flat_input(input_shape, "mlp")
    for i, width in enumerate(hidden):
        layers.append(keras.layers.Dense(width, activation=activation, kernel_initializer=_init("glorot", seed, i),
                                         name=f"dense_{i + 1}"))
    layers.append(keras.layers.Dense(num_classes, kernel_initializer=_init("glorot", seed, len(hidden)),
                                     name="logits"))
    return keras.Sequential(layers, name="mlp")


@register_model("purchase-fcn")
def purchase_fcn(input_shape, num_classes, seed, widths=(1024, 512, 256, 128)):
    """Nasr et al.'s Purchase100 network: 1024-512-256-128-classes, tanh, N(0, 0.01) initialisation.
    ``widths``: other hidden widths (four of them, so that the tutorial's layer indices still apply)."""
    import keras

    widths = [int(w) for w in widths]
    if len(widths) != 4 or min(widths) < 1:
        raise ModelError(f"model.widths: must be four positive widths (purchase-fcn has four hidden layers), "
                         f"got {widths}")
    layers = _flat_input(input_shape, "purchase")
    for i, width in enumerate(widths):
        layers.append(keras.layers.Dense(width, activation="tanh", kernel_initializer=_init("normal", seed, i),
                                         name=f"dense_{i + 1}"))
    layers.append(keras.layers.Dense(num_classes, kernel_initializer=_init("normal", seed, 4), name="logits"))
    return keras.Sequential(layers, name="purchase_fcn")


def _require_image(input_shape, name):
    if len(input_shape) != 3:
        raise ModelError(
            f"model: {name!r} needs image inputs (height, width, channels), got input shape {input_shape}; "
            f"use a dataset option that yields images (digits: image = true) or the 'mlp' model"
        )


@register_model("cnn")
def cnn(input_shape, num_classes, seed, filters=(16, 32), dense=64):
    """A small conv net: [conv 3x3 + max-pool] per entry of ``filters``, then one dense layer."""
    _require_image(input_shape, "cnn")
    import keras

    layers = [keras.Input(shape=input_shape)]
    for i, f in enumerate(filters):
        layers.append(keras.layers.Conv2D(int(f), 3, padding="same", activation="relu",
                                          kernel_initializer=_init("glorot", seed, i), name=f"conv_{i + 1}"))
        if min(input_shape[:2]) // (2 ** (i + 1)) >= 1:
            layers.append(keras.layers.MaxPooling2D(2, name=f"pool_{i + 1}"))
    layers += [
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(int(dense), activation="relu", kernel_initializer=_init("glorot", seed, 10), name="dense"),
        keras.layers.Dense(num_classes, kernel_initializer=_init("glorot", seed, 11), name="logits"),
    ]
    return keras.Sequential(layers, name="cnn")


@register_model("alexnet-small")
def alexnet_small(input_shape, num_classes, seed):
    """An AlexNet-style network sized for 32x32 images (as used for CIFAR in the membership-inference papers)."""
    _require_image(input_shape, "alexnet-small")
    import keras

    g = lambda i: _init("glorot", seed, i)  # noqa: E731
    layers = [
        keras.Input(shape=input_shape),
        keras.layers.Conv2D(64, 5, padding="same", activation="relu", kernel_initializer=g(0), name="conv_1"),
        keras.layers.MaxPooling2D(2, name="pool_1"),
        keras.layers.Conv2D(128, 5, padding="same", activation="relu", kernel_initializer=g(1), name="conv_2"),
        keras.layers.MaxPooling2D(2, name="pool_2"),
        keras.layers.Conv2D(192, 3, padding="same", activation="relu", kernel_initializer=g(2), name="conv_3"),
        keras.layers.Conv2D(128, 3, padding="same", activation="relu", kernel_initializer=g(3), name="conv_4"),
        keras.layers.MaxPooling2D(2, name="pool_3"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(256, activation="relu", kernel_initializer=g(4), name="dense_1"),
        keras.layers.Dense(num_classes, kernel_initializer=g(5), name="logits"),
    ]
    return keras.Sequential(layers, name="alexnet_small")

