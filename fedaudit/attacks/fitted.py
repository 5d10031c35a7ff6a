"""The trained attacks of the auditor: logistic regression on per-record features, cross-fitted.

In ``[audit] attacks`` and ``--attacks``, ``whitebox`` names the logistic attack on every feature of
:mod:`fedaudit.auditor.features` (outputs, per-layer gradient norms, update cosines, activation statistics) and
``blackbox`` the one on the output features only, :data:`OUTPUT_FEATURES`, chosen by name. Neither is the attack
network of Nasr et al. (2019), :class:`fedaudit.attacks.nasr.WhiteBoxAttack`, which the per-round auditor does
not run. The classifier and the cross-fitting live in :mod:`fedaudit.auditor.attack` (NumPy); this module only
registers which features each attack reads.
"""

from __future__ import annotations

import numpy as np

from fedaudit.attacks.base import register_trained_attack

#: the names of the output-only features (see fedaudit.auditor.features)
OUTPUT_FEATURES = ("phi", "log_loss", "neg_entropy", "neg_mentropy", "correct", "loss_drop", "phi_gain")


@register_trained_attack("whitebox", rank=10)
def all_feature_columns(feature_names) -> np.ndarray:
    """Logistic regression on every per-record feature: outputs, gradient norms, update cosines."""
    return np.arange(len(feature_names))


@register_trained_attack("blackbox", rank=20)
def output_feature_columns(feature_names) -> np.ndarray:
    """Logistic regression on the output-only features (confidence, loss, entropies, their change)."""
    return np.array([i for i, name in enumerate(feature_names) if name in OUTPUT_FEATURES], dtype=np.int64)
