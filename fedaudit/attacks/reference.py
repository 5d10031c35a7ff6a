"""Attack R, reference (Ye et al. 2022): a per-record threshold from reference models trained without it.

For each audited record, the reference models that did not train on it (OUT) give a distribution of its
loss; the record is flagged at level alpha when the target's loss on it is below that distribution's
alpha-quantile. With a handful of reference models the empirical quantile is coarse, so the paper smooths
it. ``gaussian`` (default, the paper's logit rescaling): fit a Gaussian (maximum likelihood) to the
logit-scaled confidence phi = log(p / (1 - p)) of the record on the OUT models and return the z-score of
the target's phi (Phi(z) is the one-sided p-value; z ranks the same). ``linear``: linear interpolation of
the empirical quantiles of the loss, with 0 and ``loss_max`` added as end points (as ML Privacy Meter's
reference attack does); the score is minus the interpolated quantile level of the target's loss.
"""

from __future__ import annotations

import numpy as np

from fedaudit.attacks.base import AttackInputs, register_score_attack
from fedaudit.attacks.gaussian import record_gaussians, z_score
from fedaudit.attacks.scores import logit_confidence, loss
from fedaudit.errors import AttackError


@register_score_attack("reference", needs=("reference_out",), rank=90)
def reference_attack(inputs: AttackInputs, smoothing: str = "gaussian", loss_max: float = 1000.0) -> np.ndarray:
    """Attack R (Ye et al. 2022): per-record threshold from OUT reference models, smoothed."""
    out = ~inputs.in_mask()
    if smoothing == "gaussian":
        phi = logit_confidence(inputs.target_logits, inputs.labels)
        ref = logit_confidence(inputs.reference_logits, inputs.labels)            # (R, n)
        mean, sd = record_gaussians(ref, out, variance="mle")                     # maximum likelihood
        return z_score(phi, mean, sd)
    if smoothing == "linear":
        target = loss(inputs.target_logits, inputs.labels)
        ref = loss(inputs.reference_logits, inputs.labels)
        scores = np.empty(target.size)
        for i in range(target.size):
            dist = np.sort(np.r_[ref[out[:, i], i], 0.0, float(loss_max)])
            levels = np.linspace(0.0, 1.0, dist.size)
            scores[i] = -np.interp(target[i], dist, levels)
        return scores
    raise AttackError(f"attack 'reference': smoothing must be 'gaussian' or 'linear', got {smoothing!r}")
