"""Canary clients in the federation: where their updates enter the aggregate, and what the adversary's views make
of them (the estimator is :mod:`fedaudit.canaries`).

:class:`CanaryStrategy` sits right around the mean-of-updates strategy (FedAvg, FedProx), under Flower's DP
wrappers, so a canary's update enters the aggregate like a clipped client update and before the central noise.
Each canary weighs as one of the round's ``m`` real clients: the aggregate becomes
``mean(real updates) + sum(canary updates) / m``, so the real clients' mean is not diluted and every canary
faces the noise multiplier a real client faces (Flower's central noise is ``z * C / m``). Under local DP each
canary is noised like a client (``N(0, (z C)^2)`` on every parameter, Flower's ``LocalDpMod`` calibration).

Canaries never reach the audit: :class:`~fedaudit.federation.strategy.AuditedStrategy` sits above this wrapper
and sees only the real clients' replies. What each round did with them goes to ``canaries.npz`` in the run dir.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedaudit.canaries import CANARIES_FILE, CanaryBank, flatten


def local_dp_std(noise_multiplier: float, clipping_norm: float) -> float:
    """Per-parameter noise std under local DP: ``z * C``."""
    return float(noise_multiplier) * float(clipping_norm)


def local_dp_epsilon(noise_multiplier: float, delta: float) -> float:
    """The ``epsilon`` to give Flower's ``LocalDpMod`` (with ``sensitivity = clipping_norm``) so that its noise std,
    ``sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon``, is exactly ``noise_multiplier * clipping_norm``.

    This is the classic Gaussian-mechanism calibration (Dwork and Roth, Thm A.1), which certifies
    (epsilon, delta) per round only for epsilon < 1; fedaudit reports the guarantee from the Renyi accountant
    of the same Gaussian mechanism instead (:func:`fedaudit.dp.scenario_privacy`).
    """
    return math.sqrt(2 * math.log(1.25 / float(delta))) / float(noise_multiplier)


class CanaryAudit:
    """The canaries of one run: their directions, what each round added, and the statistics each view gives."""

    def __init__(self, scenario, initial_weights: list, run_dir: Path | None = None):
        self.scenario = scenario
        self.shapes = [np.asarray(w).shape for w in initial_weights]
        self.initial = flatten(initial_weights)
        n = scenario.audit.canaries
        self.bank = CanaryBank(self.initial.size, n, seed=scenario.federation.seed)
        self.clip = float(scenario.dp.clipping_norm)
        self.local = scenario.dp.mode == "local"
        self.std = local_dp_std(scenario.dp.noise_multiplier, self.clip) if self.local else 0.0
        self.path = Path(run_dir) / CANARIES_FILE if run_dir is not None else None
        self.rows: dict[int, dict] = {}
        self.contribution = np.zeros(self.initial.size, dtype=np.float64)   # sum of what canaries added
        self.pending: dict[int, dict] = {}
        self.last_add = np.zeros(self.initial.size, dtype=np.float64)
        if self.path is not None and self.path.is_file():
            self._load()

    # -- aggregation side -------------------------------------------------------------------------------

    def add_to(self, round_: int, weights: list, real_clients: int) -> list:
        """``weights`` (the inner strategy's aggregate) with this round's canary updates added."""
        m = max(1, int(real_clients))
        part = self.bank.participation(round_, self.scenario.federation.fraction)
        canary_updates = self.clip * self.bank.inserted[part].astype(np.float64)      # (p, K)
        server_in = np.full(len(self.bank.inserted), np.nan)
        server_fresh = np.full(len(self.bank.fresh), np.nan)
        add = np.zeros(self.initial.size, dtype=np.float64)
        if self.local:
            rng = np.random.default_rng([self.scenario.federation.seed, 0xCA7C, int(round_)])
            noise = self.std * rng.standard_normal(canary_updates.shape)
            released = canary_updates + noise                     # what the server receives from each canary
            # the server's view of each canary's own (noised) update, and fresh canaries against the same updates
            norms = np.linalg.norm(released, axis=1)
            server_in[part] = np.einsum("ij,ij->i", self.bank.inserted[part], released) / norms
            server_fresh[part] = np.einsum("ij,ij->i", self.bank.fresh[part], released) / norms
            add[self.bank.coords] = released.sum(axis=0)
            rest = np.ones(self.initial.size, dtype=bool)
            rest[self.bank.coords] = False
            if rest.any() and part.any():    # the canaries' noise off their coordinates: one draw of the summed noise
                add[rest] = self.std * math.sqrt(int(part.sum())) * rng.standard_normal(int(rest.sum()))
        else:
            add[self.bank.coords] = canary_updates.sum(axis=0)
        add /= m
        self.pending[int(round_)] = {"participation": part, "server_inserted": server_in,
                                     "server_fresh": server_fresh, "add": add, "clients": m}
        out, start = [], 0
        for w in weights:
            size = int(np.prod(w.shape))
            out.append((np.asarray(w, dtype=np.float64) + add[start:start + size].reshape(w.shape)).astype(w.dtype))
            start += size
        return out

    # -- the adversary's side ---------------------------------------------------------------------------

    def observe(self, round_: int, previous: list, new: list | None) -> list | None:
        """Record round ``round_``'s statistics; returns ``new`` with every canary contribution so far removed
        (None when the round produced no model)."""
        pending = self.pending.pop(int(round_), None)
        if new is None or pending is None:
            return None
        flat_new = flatten(new)
        self.contribution += pending["add"]
        self.last_add = pending["add"]
        ins, fresh = self.bank.cosines(flat_new - flatten(previous))
        fin, fin_fresh = self.bank.cosines(flat_new - self.initial)
        self.rows[int(round_)] = {"inserted": ins, "fresh": fresh, "final_inserted": fin, "final_fresh": fin_fresh,
                                  "participation": pending["participation"], "clients": pending["clients"],
                                  "server_inserted": pending["server_inserted"],
                                  "server_fresh": pending["server_fresh"]}
        self._save()
        return self.unflatten(flat_new - self.contribution)

    def unflatten(self, flat: np.ndarray) -> list:
        out, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape))
            out.append(flat[start:start + size].reshape(shape).astype(np.float32))
            start += size
        return out

    def _save(self) -> None:
        from fedaudit.rundir import atomic_save_npz

        if self.path is None:
            return
        rounds = sorted(self.rows)
        arrays = {"rounds": np.asarray(rounds, dtype=np.int64), "contribution": self.contribution,
                  "last_add": self.last_add,
                  "clients": np.asarray([self.rows[t]["clients"] for t in rounds], dtype=np.int64)}
        for key in ("inserted", "fresh", "final_inserted", "final_fresh", "participation", "server_inserted",
                    "server_fresh"):
            arrays[key] = np.stack([self.rows[t][key] for t in rounds])
        atomic_save_npz(self.path, **arrays)

    def _load(self) -> None:
        with np.load(self.path, allow_pickle=False) as z:
            rounds = [int(t) for t in z["rounds"]]
            self.contribution = z["contribution"].astype(np.float64)
            self.last_add = z["last_add"].astype(np.float64)
            for i, t in enumerate(rounds):
                self.rows[t] = {key: z[key][i] for key in ("inserted", "fresh", "final_inserted", "final_fresh",
                                                          "participation", "server_inserted", "server_fresh")}
                self.rows[t]["clients"] = int(z["clients"][i])

    def forget_after(self, round_: int) -> None:
        """A resumed run redoes the rounds after ``round_``: drop what they recorded (their contribution too)."""
        later = sorted(t for t in self.rows if t > round_)
        if later == [round_ + 1]:
            self.contribution -= self.last_add         # the canary file was written, the checkpoint was not
        elif later:
            self.contribution[:] = np.nan              # unknown: no accuracy without canaries for this run
        for t in later:
            del self.rows[t]


class CanaryStrategy(Strategy):
    """Adds the canaries' updates to the aggregate of ``strategy`` (a mean of updates); everything else passes."""

    def __init__(self, strategy: Strategy, canaries: CanaryAudit):
        self.strategy = strategy
        self.canaries = canaries

    def __getattr__(self, name):
        # Flower's DP wrappers and fedaudit's helpers read attributes of the strategy they wrap
        if name in ("strategy", "canaries"):
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round, arrays, config, grid):
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        real = sum(1 for r in replies if not r.has_error())
        keys = list(arrays.keys())
        added = self.canaries.add_to(server_round, arrays.to_numpy_ndarrays(), real)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(keys, added, strict=True)}), metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.strategy.aggregate_evaluate(server_round, replies)


__all__ = ["CANARIES_FILE", "CanaryAudit", "CanaryStrategy", "local_dp_epsilon", "local_dp_std"]
