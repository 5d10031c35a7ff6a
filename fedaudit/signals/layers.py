"""Which layers of a Keras model a caller means: 1-based indices (as ML Privacy Meter counted) or names.

Two countings, both ML Privacy Meter's:

- a layer whose *output* is wanted is counted among ``model.layers`` (1 = the first layer after the input);
- a layer whose *gradient* is wanted is counted among the layers that have a kernel (Dense and
  convolutional layers, in model order), so ``gradients_to_exploit=[6]`` is the sixth such layer
  even when pooling, normalisation or dropout layers sit between them.

A name picks the layer of that name in ``model.layers`` under either counting; where the caller allows it
(``other_weights``), a gradient layer's name may also pick a layer without a kernel whose gradient rule
(:mod:`fedaudit.signals.rules`) takes another weight: an Embedding's matrix, a normalisation layer's scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import keras

from fedaudit.errors import AttackError


@dataclass(frozen=True)
class LayerRef:
    """A resolved layer: its position (1-based, in the counting that chose it), name and object."""

    index: int
    name: str
    layer: keras.layers.Layer


def kernel_of(layer) -> keras.Variable | None:
    """The layer's kernel variable, or None if it has none (pooling, BatchNormalization, ...)."""
    try:
        kernel = getattr(layer, "kernel", None)
    except Exception:  # a property that cannot be evaluated (an unbuilt or quantized layer)
        return None
    if kernel is None or not hasattr(kernel, "shape") or len(kernel.shape) < 2:
        return None
    return kernel


def kernel_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's top-level layers that have a kernel, in order (ML Privacy Meter's gradient counting)."""
    return [layer for layer in model.layers if kernel_of(layer) is not None]


def _listing(layers: list, limit: int = 12) -> str:
    items = [f"{i} = {layer.name}" for i, layer in enumerate(layers, start=1)]
    if len(items) > limit:
        items = items[: limit - 2] + ["...", items[-1]]
    return ", ".join(items)


def _as_refs(refs, option: str) -> list:
    if refs is None:
        return []
    if isinstance(refs, (str, int)) and not isinstance(refs, bool):
        refs = [refs]
    try:
        refs = list(refs)
    except TypeError:
        raise AttackError(f"{option}: must be a list of 1-based layer indices or layer names; got {refs!r}") from None
    for ref in refs:
        if isinstance(ref, bool) or not isinstance(ref, (int, str)) and not hasattr(ref, "__index__"):
            raise AttackError(f"{option}: {ref!r} is neither a 1-based layer index nor a layer name")
    return refs


def _dedupe(resolved: Iterable[LayerRef]) -> list[LayerRef]:
    seen, out = set(), []
    for ref in resolved:
        if ref.name not in seen:
            seen.add(ref.name)
            out.append(ref)
    return out


def resolve_output_layers(model: keras.Model, refs, option: str = "layers") -> list[LayerRef]:
    """Resolve layers whose outputs are wanted: 1-based indices into ``model.layers`` or names."""
    layers = list(model.layers)
    allowed = f"allowed: 1..{len(layers)} ({_listing(layers)}) or one of those names"
    return _pick(layers, refs, option, allowed, "layer",
                 lambda ref: f"{option}: the model has no layer named {ref!r}; {allowed}")


def _pick(layers: list, refs, option: str, allowed: str, what: str, unknown_name, extra=None) -> list[LayerRef]:
    """Resolve 1-based indices into ``layers`` or names of its layers; ``unknown_name(ref)`` words the error
    for a name that is not among them. ``extra`` maps further names to their LayerRef (names only)."""
    by_name = {layer.name: i for i, layer in enumerate(layers, start=1)}
    extra = extra or {}
    out = []
    for ref in _as_refs(refs, option):
        if isinstance(ref, str):
            if ref not in by_name:
                if ref in extra:
                    out.append(extra[ref])
                    continue
                raise AttackError(unknown_name(ref))
            index = by_name[ref]
        else:
            index = int(ref)
            if not 1 <= index <= len(layers):
                raise AttackError(f"{option}: {what} {index} is out of range; {allowed}")
        out.append(LayerRef(index, layers[index - 1].name, layers[index - 1]))
    return _dedupe(out)


def weighted_layers(model: keras.Model, weight_of) -> list[LayerRef]:
    """The model's top-level layers without a kernel for which ``weight_of(layer)`` (a gradient rule's chosen
    weight, :func:`fedaudit.signals.rules.weight_of`) is not None: Embedding, BatchNormalization,
    LayerNormalization, ..., with their 1-based positions in ``model.layers``."""
    return [LayerRef(i, layer.name, layer) for i, layer in enumerate(model.layers, start=1)
            if kernel_of(layer) is None and weight_of(layer) is not None]


def resolve_gradient_layers(model: keras.Model, refs, option: str = "gradients", *,
                            other_weights=None) -> list[LayerRef]:
    """Resolve layers whose kernel gradients are wanted: 1-based indices among the layers that have a
    kernel (Dense, convolutional), or names of such layers; given ``other_weights`` (a function from a layer
    to its chosen weight or None, as :func:`fedaudit.signals.rules.weight_of`), also names of layers without
    a kernel that have such a weight (see :func:`weighted_layers`; their index is their position in
    ``model.layers``)."""
    layers = kernel_layers(model)
    extra = {ref.name: ref for ref in weighted_layers(model, other_weights)} if other_weights else {}
    if not layers and _as_refs(refs, option) and not (extra and all(r in extra for r in _as_refs(refs, option))):
        raise AttackError(f"{option}: the model has no layer with a kernel (Dense or convolutional), "
                          "so no gradient can be exploited; allowed: an empty list")
    allowed = (f"allowed: 1..{len(layers)}, counting only layers with a kernel ({_listing(layers)}), "
               "or one of those names")
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}

    def unknown_name(ref: str) -> str:
        if ref in kinds:
            return (f"{option}: layer {ref!r} ({kinds[ref]}) has no kernel, so it has no kernel gradient; "
                    f"{allowed}")
        return f"{option}: the model has no layer named {ref!r}; {allowed}"

    return _pick(layers, refs, option, allowed, "gradient layer", unknown_name, extra)
