"""The fallback rule: the Jacobian of the per-example losses with respect to the layer's weight.

It serves every layer with weights that no other rule takes (depthwise, separable and transposed convolutions,
Conv3D, a Dense subclass with its own ``call``, ...). TensorFlow vectorises the Jacobian (``pfor``), so it
costs about three gradient-sized arrays per example, against one for the rules that record activations.
"""

from __future__ import annotations

from fedaudit.signals.layers import kernel_of
from fedaudit.signals.rules.registry import LayerRule, set_generic


class GenericRule(LayerRule):
    """Per-example gradients of the layer's kernel (else its first trainable weight) as a Jacobian of the
    per-example losses."""

    name = "generic"
    records = False

    def applies(self, layer) -> bool:
        return True

    def weight(self, layer):
        kernel = kernel_of(layer)
        if kernel is not None:
            return kernel
        trainable = [w for w in getattr(layer, "trainable_weights", ()) if len(w.shape) >= 1]
        return trainable[0] if trainable else None

    def from_losses(self, layer, tape, losses):
        return tape.jacobian(losses, self.weight(layer), experimental_use_pfor=True)

    def floats_per_example(self, layer) -> int:
        return 3 * super().floats_per_example(layer)


set_generic(GenericRule())
