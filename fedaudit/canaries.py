"""Epsilon measured in one run with canary clients (Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot
Empirical Privacy Estimation for Federated Learning", ICLR 2024).

A canary client's update is a fixed random direction ``c`` of norm ``clipping_norm``; the aggregator adds it to
the aggregate like any client's clipped update (before the central noise; under local DP noised like any
client). The test statistic is the cosine of ``c`` with what the adversary sees: each round's model delta (the
all-iterates threat model: the per-round cosines are summed over the rounds, which for a canary repeated in
every round of a Gaussian mechanism is the likelihood-ratio test and composes as the mechanism does), or the
final model minus the initial one (the final-model threat model). Fresh canaries, drawn the same way but never
inserted, give the statistic's null distribution. In high dimension both are Gaussian with (asymptotically)
equal variance (the paper's Theorem 3.2), so the two fitted Gaussians are those of a Gaussian mechanism with
``mu = (mean_inserted - mean_fresh) / pooled sd``, whose exact (epsilon, delta) curve is Balle and Wang's (ICML
2018): ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``. The interval comes from a bootstrap
over the canaries (epsilon is monotone in mu, so the mu interval maps to the epsilon interval).

NumPy only. Every random draw comes from a seeded :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import math

import numpy as np

#: Canaries live in a fixed, seeded random subset of this many coordinates of the flattened parameter vector
#: (all of them when the model has fewer). A cosine within a coordinate subset is as valid a test statistic as
#: one over all coordinates (the noise is isotropic), and it keeps the canaries' cost linear in their number.
CANARY_DIMS = 20000
CANARIES_FILE = "canaries.npz"      # in the run dir: what each round did with the canaries

_erfc = np.frompyfunc(math.erfc, 1, 1)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _log_phi(x):
    """log of the standard normal CDF, stable far into the lower tail."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    far = x < -30
    near = ~far
    out[near] = np.log(np.maximum(_erfc(-x[near] / math.sqrt(2)).astype(np.float64) / 2, 1e-300))
    xf = x[far]
    out[far] = -0.5 * xf * xf - np.log(-xf) - _LOG_SQRT_2PI
    return out


def gaussian_delta(epsilon, mu):
    """delta(epsilon) of the Gaussian mechanism with sensitivity / sigma = ``mu`` (Balle and Wang 2018, Thm 8)."""
    epsilon, mu = np.broadcast_arrays(np.asarray(epsilon, dtype=np.float64), np.asarray(mu, dtype=np.float64))
    mu = np.maximum(mu, 1e-12)
    a = np.exp(_log_phi(-epsilon / mu + mu / 2))
    b = np.exp(np.minimum(epsilon + _log_phi(-epsilon / mu - mu / 2), 700.0))
    return np.maximum(a - b, 0.0)


def gaussian_epsilon(mu, delta: float):
    """The smallest epsilon with ``gaussian_delta(epsilon, mu) <= delta`` (0 where mu is 0; vectorised)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    mu = np.abs(np.asarray(mu, dtype=np.float64))
    scalar = mu.ndim == 0
    mu = np.atleast_1d(mu)
    lo = np.zeros_like(mu)
    hi = np.maximum(mu * mu / 2 + mu * math.sqrt(2 * math.log(1 / delta)) + 1.0, 1.0)
    for _ in range(80):
        mid = (lo + hi) / 2
        above = gaussian_delta(mid, mu) > delta
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    out = np.where(gaussian_delta(0.0, mu) <= delta, 0.0, hi)
    return float(out[0]) if scalar else out


def gaussian_mu(observed: np.ndarray, null: np.ndarray) -> float:
    """Standardised distance of the inserted canaries' statistic from the fresh ones' (pooled, equal variance)."""
    observed, null = np.asarray(observed, dtype=np.float64), np.asarray(null, dtype=np.float64)
    pooled = math.sqrt((observed.var(ddof=1) * (observed.size - 1) + null.var(ddof=1) * (null.size - 1))
                       / (observed.size + null.size - 2))
    diff = float(observed.mean() - null.mean())
    if pooled == 0:
        return math.inf if diff != 0 else 0.0
    return diff / pooled


def estimate_epsilon(observed, null, delta: float, *, bootstrap: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict:
    """Epsilon at ``delta`` of the Gaussian fitted to the inserted canaries' statistic against the fresh ones'.

    Returns ``{"epsilon", "ci": [low, high], "mu", "mu_ci", "level", "delta", "inserted", "fresh",
    "mean_inserted", "mean_fresh", "sd_inserted", "sd_fresh"}``; epsilon is ``inf`` when the statistic has no
    spread at all (a canary seen exactly, e.g. its own update without noise). A negative mu (the inserted
    canaries look less inserted than fresh ones) estimates epsilon 0.
    """
    observed = np.asarray(observed, dtype=np.float64).ravel()
    null = np.asarray(null, dtype=np.float64).ravel()
    observed, null = observed[np.isfinite(observed)], null[np.isfinite(null)]
    if observed.size < 3 or null.size < 3:
        raise ValueError(f"need at least 3 inserted and 3 fresh canaries, got {observed.size} and {null.size}")
    mu = gaussian_mu(observed, null)
    out = {"delta": float(delta), "level": float(level), "inserted": int(observed.size), "fresh": int(null.size),
           "mean_inserted": float(observed.mean()), "mean_fresh": float(null.mean()),
           "sd_inserted": float(observed.std(ddof=1)), "sd_fresh": float(null.std(ddof=1)), "mu": float(mu)}
    if not math.isfinite(mu):
        out.update(epsilon=math.inf, ci=[math.inf, math.inf], mu_ci=[math.inf, math.inf])
        return out
    rng = np.random.default_rng(seed)
    mus = np.empty(bootstrap)
    for b in range(bootstrap):
        o = observed[rng.integers(0, observed.size, observed.size)]
        n = null[rng.integers(0, null.size, null.size)]
        mus[b] = gaussian_mu(o, n)
    mus = np.where(np.isfinite(mus), mus, np.nanmax(np.where(np.isfinite(mus), mus, np.nan)))
    alpha = (1 - level) / 2
    lo_mu, hi_mu = (float(x) for x in np.quantile(mus, [alpha, 1 - alpha]))
    eps = lambda m: gaussian_epsilon(max(m, 0.0), delta)  # noqa: E731
    out.update(epsilon=eps(mu), ci=[eps(lo_mu), eps(hi_mu)], mu_ci=[lo_mu, hi_mu])
    return out


# ----------------------------------------------------------------------------------------------------
# Canary directions and statistics (plain arrays; the federation side inserts them)
# ----------------------------------------------------------------------------------------------------


class CanaryBank:
    """``inserted`` canaries that enter the aggregate and as many ``fresh`` ones that never do, as unit directions
    in a fixed coordinate subset of the flattened model; all drawn from ``seed``."""

    def __init__(self, num_params: int, inserted: int, seed: int, fresh: int | None = None,
                 dims: int = CANARY_DIMS):
        rng = np.random.default_rng([int(seed), 0xCA7A])
        self.num_params = int(num_params)
        k = min(int(dims), self.num_params)
        self.coords = np.sort(rng.choice(self.num_params, size=k, replace=False)) if k < self.num_params \
            else np.arange(self.num_params)
        fresh = inserted if fresh is None else int(fresh)
        d = rng.standard_normal((inserted + fresh, k)).astype(np.float32)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        self.inserted, self.fresh = d[:inserted], d[inserted:]
        self.seed = int(seed)

    def participation(self, round_: int, fraction: float) -> np.ndarray:
        """Which inserted canaries take part in ``round_`` (each with probability ``fraction``, seeded)."""
        if fraction >= 1:
            return np.ones(len(self.inserted), dtype=bool)
        rng = np.random.default_rng([self.seed, 0xCA7B, int(round_)])
        return rng.random(len(self.inserted)) < fraction

    def cosines(self, flat_delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosines of the inserted and the fresh canaries with a flattened model delta (on the canary coordinates)."""
        v = np.asarray(flat_delta, dtype=np.float64)[self.coords]
        norm = float(np.linalg.norm(v))
        if norm == 0 or not math.isfinite(norm):
            nan = np.full(len(self.inserted), np.nan), np.full(len(self.fresh), np.nan)
            return nan
        return (self.inserted @ v) / norm, (self.fresh @ v) / norm


def flatten(weights) -> np.ndarray:
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


__all__ = ["CANARIES_FILE", "CANARY_DIMS", "CanaryBank", "estimate_epsilon", "flatten", "gaussian_delta", "gaussian_epsilon",
           "gaussian_mu"]
