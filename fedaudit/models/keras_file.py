"""Your own Keras model, from a saved ``.keras`` file: the ``keras-file`` model of the registry.

``[model] name = "keras-file"``, ``path = "model.keras"``: every model the audit builds (the auditor's probe, the
reference models) is the saved architecture with fresh weights drawn from seeded initializers, so a model a
user trains in their own code (a Flower ClientApp, a notebook) is audited without registering a builder.

- Files load with ``safe_mode=True`` (no deserialised lambdas) and without their compile state.
- fedaudit's attacks read logits: a model whose last layer applies a softmax (``Dense(..., activation="softmax")``,
  or a trailing ``Softmax`` / ``Activation("softmax")`` layer of a Sequential model) is audited on the logits
  under that softmax (:func:`as_logits`); its weights are the same arrays in the same order.

Importing this module imports no TensorFlow; the functions import Keras when they run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from fedaudit.errors import ModelError
from fedaudit.models.registry import register_model

SUFFIX = ".keras"


def check_model_file(path, option: str = "model") -> Path:
    """``path`` as a Path if it names an existing ``.keras`` file (no TensorFlow needed)."""
    p = Path(str(path)).expanduser()
    if p.suffix != SUFFIX:
        raise ModelError(f"{option} {str(path)!r}: not a .keras file; allowed: a model saved with "
                         "model.save('x.keras')")
    if not p.is_file():
        raise ModelError(f"{option} {str(path)!r}: no such file")
    return p


def load_keras_model(path, option: str = "model"):
    """The model saved at ``path``, loaded with ``safe_mode=True`` and ``compile=False``; ModelError if unreadable."""
    import keras

    p = check_model_file(path, option)
    try:
        return keras.saving.load_model(p, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; name the file and the cause
        raise ModelError(f"{option} {str(path)!r}: cannot be loaded with safe_mode=True ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); allowed: a Keras 3 .keras file whose "
                         "layers are Keras built-ins or registered with keras.saving.register_keras_serializable"
                         ) from None


def _is_softmax(layer) -> bool:
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return activation is keras.activations.softmax or getattr(activation, "__name__", "") == "softmax"


def ends_in_softmax(model) -> bool:
    return bool(model.layers) and _is_softmax(model.layers[-1])


def _layer_configs(config: dict) -> list:
    return config["config"]["layers"]


def _without_softmax(config: dict, model) -> dict:
    """The serialised ``model`` with its final softmax removed (activation set to linear, or the layer dropped)."""
    import keras

    config = copy.deepcopy(config)
    last = model.layers[-1]
    layers = _layer_configs(config)
    entry = next((e for e in layers if e.get("config", {}).get("name") == last.name), None)
    if entry is None:
        raise ModelError(f"model: cannot find its last layer {last.name!r} in its config to remove the softmax")
    if "activation" in entry["config"] and not isinstance(last, (keras.layers.Softmax, keras.layers.Activation)):
        entry["config"]["activation"] = "linear"
    elif isinstance(model, keras.Sequential):
        layers.remove(entry)
    else:
        raise ModelError(f"model: its output layer {last.name!r} is a softmax layer of a functional model; allowed: "
                         "a model that ends in logits, or in Dense(..., activation='softmax')")
    return config


def _reseed(node, rng: np.random.Generator) -> None:
    """Give every initializer in a serialised model a seed drawn from ``rng`` (in a fixed traversal order)."""
    if isinstance(node, dict):
        cfg = node.get("config")
        if node.get("module") == "keras.initializers" and isinstance(cfg, dict) and "seed" in cfg:
            cfg["seed"] = int(rng.integers(1, 2**31 - 1))
        for value in node.values():
            _reseed(value, rng)
    elif isinstance(node, list):
        for value in node:
            _reseed(value, rng)


def rebuild(model, *, logits: bool = True, seed: int | None = None, weights: bool = True):
    """A new model of ``model``'s architecture: on logits (``logits``), with fresh weights from initializers seeded
    by ``seed`` (``weights=False``) or with ``model``'s weights (``weights=True``)."""
    import keras

    config = keras.saving.serialize_keras_object(model)
    if logits and ends_in_softmax(model):
        config = _without_softmax(config, model)
    if seed is not None:
        _reseed(config, np.random.default_rng([int(seed), 0x6B6572]))
    try:
        new = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"model: cannot be rebuilt from its Keras config ({type(exc).__name__}: {exc}); allowed: "
                         "layers that are Keras built-ins or registered with keras.saving.register_keras_serializable"
                         ) from None
    if weights:
        new.set_weights(model.get_weights())
    return new


def as_logits(model):
    """``model`` if it ends in logits; else the same architecture and weights with the final softmax removed."""
    return rebuild(model, logits=True, weights=True) if ends_in_softmax(model) else model


def check_shapes(model, input_shape, num_classes: int, option: str = "model") -> None:
    """ModelError unless ``model`` takes records of ``input_shape`` and has ``num_classes`` outputs."""
    got_in = tuple(int(d) for d in model.input_shape[1:]) if model.input_shape else ()
    if input_shape is not None and got_in != tuple(int(d) for d in input_shape):
        raise ModelError(f"{option}: takes records of shape {list(got_in)}, but the data's records have shape "
                         f"{list(input_shape)}")
    out = model.output_shape
    classes = int(out[-1]) if out and out[-1] is not None else None
    if num_classes is not None and classes != int(num_classes):
        raise ModelError(f"{option}: has {classes} outputs, but the data has {num_classes} classes")


@register_model("keras-file")
def keras_file(input_shape, num_classes, seed, path):
    """The architecture saved in ``path`` (a .keras file), on logits, with fresh weights seeded by ``seed``."""
    check_model_file(path, "model.path")
    saved = load_keras_model(path, "model.path")
    check_shapes(saved, input_shape, num_classes, f"model.path {str(path)!r}")
    return rebuild(saved, logits=True, seed=seed, weights=False)


__all__ = ["load_keras_model", "as_logits", "rebuild", "ends_in_softmax", "check_shapes", "check_model_file"]
