"""Per-layer gradient rules, one small module per layer type, filed in one registry.

The signal extractor (:mod:`fedaudit.signals.extract`) asks :func:`rule_for` how to compute a layer's
per-example gradient; the NumPy auditor path (:mod:`fedaudit.auditor.dense`) asks it for the rule's NumPy half.
Adding a layer type is one rule: a :class:`LayerRule` subclass decorated with ``@register(LayerClass)``
(see :mod:`fedaudit.signals.rules.registry` for what it implements), and one test against a per-example
GradientTape in tests/test_layer_rules.py.
"""

from fedaudit.signals.rules import conv, dense, embedding, generic, normalization
from fedaudit.signals.rules.registry import (LayerRule, flat_norms, generic_rule, register, registered, rule_for,
                                             unregister, weight_of)

#: the modules whose import registers the built-in rules
RULE_MODULES = (dense, conv, embedding, normalization, generic)

__all__ = ["LayerRule", "register", "unregister", "registered", "rule_for", "weight_of", "generic_rule",
           "flat_norms"]
