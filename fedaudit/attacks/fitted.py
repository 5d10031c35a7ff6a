"""The trained attacks of the auditor: logistic regression on per-record features, cross-fitted.

``whitebox`` reads every feature of :mod:`fedaudit.auditor.features` (outputs, gradient norms, update cosines,
loss drop); ``blackbox`` only the output columns (:data:`OUTPUT_FEATURES`, the first columns of every feature
matrix). The classifier and the cross-fitting live in :mod:`fedaudit.auditor.attack` (NumPy); this module only
registers what each attack reads.
"""

from __future__ import annotations

import numpy as np

from fedaudit.attacks.base import register_trained_attack

#: the output-only features, first columns of every feature matrix (see fedaudit.auditor.features)
OUTPUT_FEATURES = ("phi", "log_loss", "neg_entropy", "neg_mentropy", "correct", "loss_drop", "phi_gain")


@register_trained_attack("whitebox", rank=10)
def whitebox_columns(feature_names) -> np.ndarray:
    """Logistic regression on every per-record feature: outputs, gradient norms, update cosines."""
    return np.arange(len(feature_names))


@register_trained_attack("blackbox", rank=20)
def blackbox_columns(feature_names) -> np.ndarray:
    """Logistic regression on the output-only features (confidence, loss, entropies, their change)."""
    return np.arange(min(len(OUTPUT_FEATURES), len(feature_names)))
