"""LiRA, the likelihood-ratio attack (Carlini et al. 2022), on the logit-scaled confidence.

phi = log(p / (1 - p)) of the true class, computed stably from logits (z_y - logsumexp of the others).
Per record, Gaussians are fitted to phi on the reference models that trained on it (IN) and did not (OUT).

- ``lira-online``: score = log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2). Needs IN and OUT
  reference models for every record (train them with ``include=`` the audited records).
- ``lira-offline``: OUT models only; score = (phi - mu_out) / s_out, the z of the one-sided test
  Phi((phi - mu_out) / s_out) of the paper (z ranks the same and does not saturate at 1).

``fixed_variance`` (default: automatic, on with fewer than 64 reference models, as the paper advises)
replaces the per-record variances by one pooled within-record variance (separately for IN and OUT). The
pooled variance is the mean squared deviation from each record's own mean, not the spread of all values
around one global mean (which the reference code's demo computes, and which mixes in how much records
differ from each other). A record with fewer than two models on one side always uses the pooled value.
"""

from __future__ import annotations

import numpy as np

from fedaudit.attacks.base import AttackInputs, register_score_attack
from fedaudit.attacks.gaussian import log_normal, record_gaussians, z_score
from fedaudit.attacks.scores import logit_confidence

AUTO_FIXED_BELOW = 64


def gaussian_fit(values: np.ndarray, mask: np.ndarray, fixed_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-record mean and standard deviation of ``values`` (R, n) over entries where ``mask`` is True: the
    pooled within-record deviation with ``fixed_variance``, else each record's own (pooled with fewer than two)."""
    return record_gaussians(values, mask, variance="pooled" if fixed_variance else "record", few="pooled")


def _fixed(fixed_variance, n_models: int) -> bool:
    return n_models < AUTO_FIXED_BELOW if fixed_variance is None else bool(fixed_variance)


@register_score_attack("lira-offline", needs=("reference_out",), aliases=("lira",), rank=70)
def lira_offline(inputs: AttackInputs, fixed_variance: bool | None = None) -> np.ndarray:
    """LiRA offline (Carlini et al. 2022): one-sided test against the OUT Gaussian of each record."""
    phi = logit_confidence(inputs.target_logits, inputs.labels)
    ref = logit_confidence(inputs.reference_logits, inputs.labels)
    out = ~inputs.in_mask()
    mean, sd = gaussian_fit(ref, out, _fixed(fixed_variance, inputs.n_reference))
    return z_score(phi, mean, sd)


@register_score_attack("lira-online", needs=("reference_in", "reference_out"), rank=40)
def lira_online(inputs: AttackInputs, fixed_variance: bool | None = None) -> np.ndarray:
    """LiRA online (Carlini et al. 2022): likelihood ratio of the IN and OUT Gaussians of each record."""
    phi = logit_confidence(inputs.target_logits, inputs.labels)
    ref = logit_confidence(inputs.reference_logits, inputs.labels)
    inm = inputs.in_mask()
    fixed = _fixed(fixed_variance, inputs.n_reference)
    mean_in, sd_in = gaussian_fit(ref, inm, fixed)
    mean_out, sd_out = gaussian_fit(ref, ~inm, fixed)
    return log_normal(phi, mean_in, sd_in) - log_normal(phi, mean_out, sd_out)
