"""The registry of per-layer gradient rules: one small rule object per Keras layer type.

A rule says how the per-example gradient of one weight of a layer (its *chosen weight*: a Dense or convolution
kernel, an embedding matrix, a normalisation scale) is computed from what the layer sees in one batched pass:
its input and the gradient of the summed loss at its output. Since the examples of a batch are independent in
inference mode, that gradient restricted to one example is the gradient of that example's own loss.

:func:`register` files a rule under one or more Keras layer classes; :func:`rule_for` walks a layer's class
hierarchy from the most derived class and returns the first registered rule that accepts the layer, else the
generic rule (a Jacobian of the per-example losses), so a subclass of a registered layer type that computes
the same thing needs no rule of its own, and one that overrides ``call`` falls back to the Jacobian.
"""

from __future__ import annotations

import logging

import tensorflow as tf

logger = logging.getLogger(__name__)

_RULES: dict[type, LayerRule] = {}


class LayerRule:
    """How one layer type's per-example gradient and its norm are computed.

    A rule that records activations (``records = True``) replaces the layer's call in the signal pass by
    :meth:`forward`, which returns the layer's output computed as the layer computes it, the tensor ``z``
    whose gradient the rule needs, and what it keeps from the input; after the backward pass the step hands
    that and ``dz`` (the gradient of the summed loss at ``z``, one row per example) to :meth:`gradients`,
    :meth:`norms` and :meth:`factors`. A rule with ``records = False`` (the generic fallback) differentiates
    the per-example losses instead, in :meth:`from_losses`.
    """

    #: a short name for logs and messages ("dense", "conv", ...)
    name = "rule"
    #: whether the step records the layer's input and output gradient (else it differentiates the losses)
    records = True
    #: the rule's NumPy half (:mod:`fedaudit.signals.numpy_rules`), or None where only TensorFlow computes it
    numpy = None

    def applies(self, layer) -> bool:
        """Whether this rule computes ``layer``'s gradients (False: the registry looks further up the class
        hierarchy, e.g. for a subclass that overrides ``call``)."""
        return self.weight(layer) is not None

    def weight(self, layer):
        """The layer's chosen weight: the variable whose per-example gradient is the signal, or None."""
        raise NotImplementedError

    def forward(self, layer, *args, **kwargs):
        """``(saved, z, out)``: what the rule keeps from the input, the tensor whose gradient it needs, and the
        layer's output (in inference mode)."""
        raise NotImplementedError

    def gradients(self, layer, saved, dz):
        """Per-example gradients of the chosen weight, shape (n, *weight.shape)."""
        raise NotImplementedError

    def norms(self, layer, saved, dz, grads=None):
        """Per-example Frobenius norms of the chosen weight's gradient, shape (n,) (``grads`` if already
        computed)."""
        return flat_norms(self.gradients(layer, saved, dz) if grads is None else grads)

    def factors(self, layer, saved, dz):
        """Two arrays whose per-example outer product is the gradient (then it is never materialised in the
        graph), or None."""
        return None

    def from_losses(self, layer, tape, losses):
        """Per-example gradients from the per-example losses, for rules with ``records = False``."""
        raise NotImplementedError

    def floats_per_example(self, layer) -> int:
        """Rough floats one example occupies in the step's outputs and largest intermediates for this layer."""
        return int(_size(self.weight(layer).shape))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _size(shape) -> int:
    total = 1
    for d in shape:
        total *= int(d)
    return total


def flat_norms(grads):
    """Per-example Frobenius norm of an (n, ...) tensor."""
    return tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(grads, [tf.shape(grads)[0], -1])), axis=1))


def register(*layer_classes):
    """Class decorator: file an instance of the decorated :class:`LayerRule` under ``layer_classes`` (a
    later registration for the same class replaces the earlier one)."""
    if not layer_classes:
        raise TypeError("register: name at least one Keras layer class")

    def decorate(rule_class):
        rule = rule_class()
        for cls in layer_classes:
            if cls in _RULES:
                logger.debug("rule %r replaces %r for %s", rule, _RULES[cls], cls.__name__)
            _RULES[cls] = rule
        return rule_class

    return decorate


def unregister(*layer_classes) -> None:
    """Remove the rules filed under ``layer_classes`` (tests use it to undo a registration)."""
    for cls in layer_classes:
        _RULES.pop(cls, None)


def registered() -> dict:
    """A copy of the registry: layer class -> rule."""
    return dict(_RULES)


def rule_for(layer) -> LayerRule:
    """The rule for ``layer``: the first registered rule, from its most derived class up, that applies, else the
    generic rule."""
    for cls in type(layer).__mro__:
        rule = _RULES.get(cls)
        if rule is not None and rule.applies(layer):
            return rule
    return generic_rule()


def weight_of(layer):
    """The chosen weight of ``layer`` under its rule, or None when no rule can take a gradient of it."""
    try:
        return rule_for(layer).weight(layer)
    except Exception:  # a property that cannot be evaluated (an unbuilt or quantized layer)
        return None


_GENERIC: list = []


def set_generic(rule: LayerRule) -> None:
    """Make ``rule`` the fallback of :func:`rule_for`."""
    _GENERIC[:] = [rule]


def generic_rule() -> LayerRule:
    return _GENERIC[0]
