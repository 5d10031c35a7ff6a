"""Per-record Gaussians of a statistic under several models, for the attacks that test a record against them.

LiRA (Carlini et al. 2022), attack R (Ye et al. 2022) and FedMIA (Zhu et al. 2024) each fit, for every
audited record, a Gaussian to its statistic (the logit-scaled confidence phi) under the models of one side
(OUT reference models, IN reference models, or the null models that did not train on it). They differ only
in which standard deviation they use, :func:`record_gaussians`'s ``variance``:

- ``"pooled"``: one within-record standard deviation for every record, the root of the squared deviations from
  each record's own mean over the pooled degrees of freedom (``sum(count - 1)``);
- ``"record"``: each record's own sample standard deviation (``count - 1`` degrees of freedom); ``few`` says
  what a record with fewer than two values gets (``"pooled"`` or ``"nan"``);
- ``"mle"``: each record's own maximum-likelihood standard deviation (``count`` degrees of freedom).

Every standard deviation is at least :data:`MIN_STD`.
"""

from __future__ import annotations

import numpy as np

from fedaudit.errors import AttackError

#: the smallest standard deviation an attack divides by (phi is O(1)-O(10); 1e-3 keeps z-scores finite)
MIN_STD = 1e-3
VARIANCES = ("pooled", "record", "mle")
FEW = ("pooled", "nan")


def record_gaussians(values: np.ndarray, mask: np.ndarray | None = None, *, variance: str = "pooled",
                     few: str = "pooled", pooled_fallback: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-record (mean, standard deviation), each of shape (n,), of ``values`` (M, n) over the entries where
    ``mask`` (M, n) is True (default: the finite entries). A record with no value gets NaN for both.

    ``pooled_fallback``: the pooled standard deviation when no record has two values (None: the spread of all
    values, or 1 without any)."""
    if variance not in VARIANCES:
        raise AttackError(f"variance: unknown {variance!r}; allowed: {', '.join(VARIANCES)}")
    if few not in FEW:
        raise AttackError(f"few: unknown {few!r}; allowed: {', '.join(FEW)}")
    values = np.asarray(values, dtype=np.float64)
    mask = np.isfinite(values) if mask is None else np.asarray(mask, dtype=bool)
    count = mask.sum(axis=0)
    have = count > 0
    mean = np.full(count.shape, np.nan)
    mean[have] = np.where(mask[:, have], values[:, have], 0.0).sum(axis=0) / count[have]
    dev = np.where(mask[:, have], values[:, have] - mean[have], 0.0)
    ss = np.full(count.shape, np.nan)
    ss[have] = (dev * dev).sum(axis=0)
    sd = np.full(count.shape, np.nan)
    if variance == "mle":
        sd[have] = np.maximum(np.sqrt(ss[have] / count[have]), MIN_STD)
        return mean, sd
    two = count >= 2
    if variance == "record":
        sd[two] = np.maximum(np.sqrt(ss[two] / (count[two] - 1)), MIN_STD)
        if few == "nan":
            return mean, sd
    pooled = pooled_std(ss[have], count[have], values[mask], pooled_fallback)
    if variance == "pooled":
        sd[have] = pooled
    else:
        sd[have & ~two] = pooled
    return mean, sd


def pooled_std(ss: np.ndarray, count: np.ndarray, values: np.ndarray, fallback: float | None = None) -> float:
    """The within-record standard deviation pooled over records with sums of squared deviations ``ss`` and
    ``count`` values each; ``fallback`` (None: the spread of ``values``, or 1 without any) when no record has two."""
    dof = int(np.sum(np.maximum(count - 1, 0)))
    if dof > 0:
        pooled = float(np.sqrt(ss.sum() / dof))
    elif fallback is not None:
        pooled = float(fallback)
    else:
        pooled = float(values.std()) if values.size else 1.0
    return max(pooled, MIN_STD)


def z_score(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """(x - mean) / sd: the z of a one-sided test against each record's Gaussian."""
    return (np.asarray(x, dtype=np.float64) - mean) / sd


def log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """log N(x; mean, sd^2) up to the constant -log(sqrt(2 pi))."""
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd)
