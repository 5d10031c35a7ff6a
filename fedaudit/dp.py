"""The formal privacy guarantee of a DP scenario, as Flower's privacy accountant computes it.

Client-level DP-FedAvg (McMahan et al. 2018): each round releases the average of the sampled clients'
clipped updates plus Gaussian noise with standard deviation ``noise_multiplier * clipping_norm / m``
(Flower's ``DifferentialPrivacy{Server,Client}SideFixedClipping``), so one round is a Gaussian mechanism
with noise multiplier ``z`` on a client's contribution. ``rounds`` such releases compose; with
``fraction < 1`` each round samples ``m`` of the ``n`` clients without replacement, which amplifies
privacy. The accountant is Renyi DP from Google's ``dp-accounting``, mapped exactly as Flower's own
``flwr.supercore.privacy_accounting.RdpAccountant`` maps its events (no amplification when every client
takes part; sampling without replacement, replace-one neighbours, otherwise). The guarantee is
client-level, so it bounds record-level membership inference too (a record belongs to one client):
an audit's empirical epsilon (a lower bound) should stay below it.

What it does not cover, and the report says so: the server that clips (server-side mode) or receives
clipped but noiseless updates (client-side mode) sees every client's update before noise is added, so
the guarantee protects against participants and outsiders who see the global models, not against the
aggregator; and it assumes uniform averaging of the clipped updates.

NumPy-free and TensorFlow-free; ``dp-accounting`` comes with ``flwr[dp]``.
"""

from __future__ import annotations

import math

ACCOUNTANT = "RDP (dp-accounting, as Flower's RdpAccountant)"


def sampled_clients(clients: int, fraction: float) -> int:
    """How many clients Flower samples per round (as the federation driver computes it)."""
    return max(1, int(clients * fraction))


def accountant_epsilon(noise_multiplier: float, rounds: int, clients: int, sampled: int | None = None,
                       delta: float = 1e-5) -> dict:
    """Epsilon at ``delta`` after ``rounds`` noisy aggregations of ``sampled`` out of ``clients`` clients.

    Returns ``{"epsilon": float (inf when there is no noise), "delta", "rounds", "sampling",
    "sampling_rate", "noise_multiplier", "accountant", "optimal_order"}``.
    """
    from dp_accounting import dp_event, privacy_accountant
    from dp_accounting.rdp import RdpAccountant

    sampled = clients if sampled is None else int(sampled)
    if not (0 < sampled <= clients):
        raise ValueError(f"sampled clients must be in 1..{clients}, got {sampled}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    out = {"delta": float(delta), "rounds": int(rounds), "noise_multiplier": float(noise_multiplier),
           "sampling_rate": sampled / clients, "accountant": ACCOUNTANT, "optimal_order": None}
    if noise_multiplier <= 0:
        out.update(epsilon=math.inf, sampling="none")
        return out
    gaussian = dp_event.GaussianDpEvent(float(noise_multiplier))
    if sampled == clients:
        relation = privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE
        event, sampling = gaussian, "none (every client takes part in every round)"
    else:
        relation = privacy_accountant.NeighboringRelation.REPLACE_ONE
        event = dp_event.SampledWithoutReplacementDpEvent(int(clients), int(sampled), gaussian)
        sampling = f"{sampled} of {clients} clients per round, without replacement"
    accountant = RdpAccountant(neighboring_relation=relation)
    accountant.compose(event, int(rounds))
    epsilon, order = accountant.get_epsilon_and_optimal_order(float(delta))
    out.update(epsilon=float(epsilon), sampling=sampling, optimal_order=float(order))
    return out


def scenario_dp(scenario) -> dict | None:
    """The ``dp`` object of summary.json for a scenario (None when it trains without DP)."""
    dp = scenario.dp
    if dp.mode == "none":
        return None
    f = scenario.federation
    if dp.mode == "local":
        # every client's own noised update is released: the Gaussian mechanism over the rounds (at most all of them)
        # it took part in, with no amplification (the server knows who took part); see fedaudit.privacy
        acc = accountant_epsilon(dp.noise_multiplier, f.rounds, 1, 1, dp.delta)
        acc["sampling"] = "none (local DP: the server sees each client's noised update)"
    else:
        acc = accountant_epsilon(dp.noise_multiplier, f.rounds, f.clients, sampled_clients(f.clients, f.fraction),
                                 dp.delta)
    return {
        "mode": dp.mode,
        "noise_multiplier": float(dp.noise_multiplier),
        "clipping_norm": float(dp.clipping_norm),
        "delta": float(dp.delta),
        "accountant_epsilon": acc["epsilon"] if math.isfinite(acc["epsilon"]) else None,
        "accountant": acc["accountant"],
        "level": "client",
        "rounds": acc["rounds"],
        "sampling": acc["sampling"],
        "sampling_rate": acc["sampling_rate"],
        "optimal_order": acc["optimal_order"],
    }


__all__ = ["accountant_epsilon", "scenario_dp", "sampled_clients", "ACCOUNTANT"]
