"""Secure aggregation: Flower's SecAgg+ protocol, on Flower's legacy strategy API (the only one SecAgg+ has in 1.42).

``SecAggPlusWorkflow`` (``flwr.server.workflow``) needs a ``LegacyContext`` and a legacy strategy
(``flwr.server.strategy``); the Message-API strategies (``flwr.serverapp.strategy``) have no secure aggregation.
So a scenario with ``[federation] secure_aggregation = true`` runs ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow)``
with a legacy FedAvg wrapped by :class:`AuditedLegacyStrategy`, and clients with ``secaggplus_mod`` (outermost)
around a ``NumPyClient``; under ``[dp] mode = "client"`` the legacy ``fixedclipping_mod`` runs inside it (the
update is clipped before it is masked) and the legacy ``DifferentialPrivacyClientSideFixedClipping`` adds the noise
to the unmasked sum.

What the server sees (checked on flwr 1.42's source): each client uploads ``quantize(w_k / max_weight * theta_k)``
plus pairwise and private masks, with its weight ``w_k`` (its number of examples) folded into the vector; the
mod clears the reply's plaintext arrays. The workflow unmasks only the sum, dequantises it to
``sum_k w_k theta_k / sum_k w_k`` and sets that one array list as *every* reply's ``FitRes.parameters`` before
calling ``Strategy.aggregate_fit``: the strategy never holds an individual client's weights. The reply's metrics
(partition id, training loss, example count) travel in plain text. Quantisation: stochastic rounding of each
weight in ``[-clipping_range, clipping_range]`` to ``quantization_range`` integers, with NumPy's global generator,
which each client seeds from the run's seed, the round and its partition before its reply is quantised: the masks
cancel exactly in the modular sum, so a SecAgg run of one seed is reproducible.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from flwr.client import NumPyClient
from flwr.common import Context, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.strategy import Strategy as LegacyStrategy

from fedaudit.config import Scenario
from fedaudit.errors import FedAuditError
from fedaudit.federation.strategy import (PARTITION_ID_KEY, RoundGrid, RoundUpdate, RunStopped, failed_partitions,
                                         seed_round_noise)

log = logging.getLogger(__name__)

CLIPPED_KEY = "secagg-clipped"   # each client reports how many of its weights SecAgg+'s clipping range cuts
SHARES = 1.0          # every sampled client holds a share of every other's secrets (SecAgg+ with full neighbourhoods)
THRESHOLD = 0.5       # shares needed to unmask a dropped client: half of them (at least 2)


def uniform_weights(scenario: Scenario) -> bool:
    """Under DP the clipped updates are averaged with equal weights (see strategy.build_strategy)."""
    return scenario.dp.mode != "none"


def max_weight(scenario: Scenario, owner: np.ndarray) -> float:
    """SecAgg+'s ``max_weight``: the largest weight a client reports (1 under uniform weighting, else the largest
    partition). Each client quantises ``weight / max_weight * theta_k``: a bound far above the real weights would
    waste the quantisation range."""
    if uniform_weights(scenario):
        return 1.0
    owner = np.asarray(owner)
    counts = np.bincount(owner[owner >= 0]) if np.any(owner >= 0) else np.array([1])
    return float(max(1, int(counts.max())))


def _train_loss(metrics: list) -> dict:
    losses = [float(m["train_loss"]) for _, m in metrics if "train_loss" in m]
    weights = [float(n) for n, m in metrics if "train_loss" in m]
    return {"train_loss": float(np.average(losses, weights=weights))} if losses and sum(weights) > 0 else {}


def build_legacy_strategy(scenario: Scenario, sampled: int, initial_weights: list) -> LegacyStrategy:
    """The legacy FedAvg the SecAgg+ workflow drives (FedProx differs from FedAvg only on the clients: the
    proximal term travels in each round's config), wrapped in client-side-clipping central DP when asked."""
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

    f = scenario.federation
    mu = float(f.proximal_mu) if f.strategy == "fedprox" else 0.0
    strategy = FedAvg(fraction_fit=f.fraction, fraction_evaluate=0.0, min_fit_clients=sampled,
                      min_evaluate_clients=0, min_available_clients=f.clients, accept_failures=True,
                      initial_parameters=ndarrays_to_parameters([np.asarray(w) for w in initial_weights]),
                      on_fit_config_fn=lambda r: {"server-round": int(r), "proximal-mu": mu},
                      fit_metrics_aggregation_fn=_train_loss)
    if scenario.dp.mode == "client":
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=scenario.dp.noise_multiplier, clipping_norm=scenario.dp.clipping_norm,
            num_sampled_clients=sampled)
    return strategy


class AuditedLegacyStrategy(LegacyStrategy):
    """Wraps a legacy strategy under SecAgg+; after each aggregation hands the round to ``observer`` with no
    client's weights (it has none): theta_prev, the clients that took part (their partition ids, sent in plain
    with their metrics) and the new global model. ``update.aggregate`` is the unmasked sum as the server computed
    it, when it differs from the new global model (central DP adds noise to it after the server has seen it).

    ``round_offset``, ``stop``, ``current_round``, ``noise_seed`` as in
    :class:`fedaudit.federation.strategy.AuditedStrategy`.
    ``seen`` records every array list that reached ``aggregate_fit`` (tests check that none is a client's own).
    """

    def __init__(self, inner: LegacyStrategy, observer, *, round_offset: int = 0,
                 stop: threading.Event | None = None, num_clients: int | None = None, active=None,
                 noise_seed: int | None = None):
        super().__init__()
        self.inner = inner
        self.noise_seed = noise_seed
        self.active = active     # the active server's SecureServerMoves (fedaudit.federation.active), or None
        self.observer = observer
        self.round_offset = int(round_offset)
        self.stop = stop if stop is not None else threading.Event()
        self.num_clients = num_clients
        self.current_round: int | None = None
        self._round: RoundUpdate | None = None
        self._sampled: dict = {}
        self._node_to_partition: dict = {}

    def initialize_parameters(self, client_manager: ClientManager):
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        if self.stop.is_set():
            raise RunStopped("stop requested")
        server_round += self.round_offset
        self.current_round = server_round
        self._round = RoundUpdate(round=server_round, previous=parameters_to_ndarrays(parameters),
                                  started=time.time())
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        if self.active is not None:
            instructions = self.active.configure(self, self._round, instructions)
        self._sampled = {proxy.node_id: proxy for proxy, _ in instructions}
        return instructions

    def node_partitions(self) -> dict:
        """{node id: partition id} of every node that has replied so far."""
        return dict(self._node_to_partition)

    def aggregate_fit(self, server_round: int, results: list, failures: list):
        server_round += self.round_offset
        update = self._round
        replied, clipped = set(), {}
        for proxy, res in sorted(results, key=lambda pr: int(pr[1].metrics.get(PARTITION_ID_KEY, -1))):
            metrics = res.metrics
            if PARTITION_ID_KEY not in metrics:
                raise FedAuditError(f"round {server_round}: a client's train reply has no {PARTITION_ID_KEY!r} in "
                                    "its metrics")
            pid = int(metrics.pop(PARTITION_ID_KEY))
            if metrics.get(CLIPPED_KEY, 0):
                clipped[pid] = int(metrics[CLIPPED_KEY])
            metrics.pop(CLIPPED_KEY, None)
            self._node_to_partition[proxy.node_id] = pid
            replied.add(proxy.node_id)
            update.participants.append(pid)
            update.examples[pid] = int(metrics.get("num-examples", res.num_examples))
            update.train_loss[pid] = float(metrics.get("train_loss", float("nan")))
        update.failed = failed_partitions([n for n in self._sampled if n not in replied], self._node_to_partition,
                                          self.num_clients)
        if clipped:
            raise FedAuditError(
                f"round {server_round}: SecAgg+ would clip {sum(clipped.values())} weights of client(s) "
                f"{', '.join(map(str, sorted(clipped)))} to federation.secagg_clipping_range (their weights exceed it, "
                "so the sum would be wrong); raise federation.secagg_clipping_range")
        sums = [parameters_to_ndarrays(res.parameters) for _, res in results]
        self.record_seen(server_round, sums)
        if self.active is not None and sums:
            self.active.recovered(update, sums[0])
        if self.noise_seed is not None:
            seed_round_noise(self.noise_seed, server_round)
        aggregated, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if aggregated is not None:
            update.new = parameters_to_ndarrays(aggregated)
            # the inner FedAvg of identical arrays returns them up to rounding; central DP's noise is far larger
            if sums and not all(np.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(sums[0], update.new)):
                update.aggregate = sums[0]
        self.observer(update)
        return aggregated, metrics

    def record_seen(self, server_round: int, arrays: list) -> None:
        """A hook for tests: every array list ``aggregate_fit`` received this round."""

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.inner.configure_evaluate(server_round + self.round_offset, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.inner.aggregate_evaluate(server_round + self.round_offset, results, failures)

    def evaluate(self, server_round, parameters):
        return None     # the driver evaluates the global model in the observer


class _Stopped(RunStopped):
    """A stop request as Flower's node-update thread expects the end of a run (it then ends quietly)."""


def _workflow_grid(grid, stop: threading.Event) -> RoundGrid:
    """A RoundGrid whose node listing ends Flower's node-update thread quietly when a stop is requested."""
    from flwr.supercore.run import RunNotRunningException

    class Stopped(_Stopped, RunNotRunningException):
        pass

    class WorkflowGrid(RoundGrid):
        def get_node_ids(self):
            if self._stop.is_set():
                raise Stopped("stop requested")
            return self._grid.get_node_ids()

    return WorkflowGrid(grid, stop)


def run_secure(grid, context: Context, strategy: AuditedLegacyStrategy, scenario: Scenario, sampled: int,
               num_rounds: int, weight_bound: float) -> None:
    """Run ``num_rounds`` rounds of SecAgg+ on ``grid`` (a RoundGrid: a stop request ends the round in progress)."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    f = scenario.federation
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=num_rounds), strategy=strategy)
    fit = SecAggPlusWorkflow(num_shares=SHARES, reconstruction_threshold=THRESHOLD, max_weight=weight_bound,
                             clipping_range=float(f.secagg_clipping_range),
                             quantization_range=int(f.secagg_quantization_range),
                             modulus_range=int(f.secagg_modulus_range))
    DefaultWorkflow(fit_workflow=fit)(_workflow_grid(grid, strategy.stop), legacy)


class _Client(NumPyClient):
    def __init__(self, spec, partition_id: int, uniform: bool, weight_bound: float, clipping_range: float):
        self.spec, self.partition_id, self.uniform = spec, partition_id, uniform
        self.weight_bound, self.clipping_range = weight_bound, clipping_range

    def fit(self, parameters, config: dict[str, Scalar]):
        from fedaudit.federation.task import local_train, seed_reply_mods

        weights, metrics = local_train(self.spec, self.partition_id, parameters, int(config["server-round"]),
                                       float(config.get("proximal-mu", 0.0)))
        capture = getattr(self.spec, "capture_dir", "")
        plan = getattr(self.spec, "active", None)
        if capture and (plan is None or plan.inconsistent_target in (None, self.partition_id)):
            _capture(capture, self.partition_id, int(config["server-round"]), parameters, weights)
        n = 1 if self.uniform else int(metrics["num-examples"])
        # SecAgg+ quantises n / max_weight * theta_k clipped to the range (a count says nothing about the weights)
        ratio = n / self.weight_bound
        clipped = int(sum(np.count_nonzero(np.abs(np.asarray(w, dtype=np.float64) * ratio) > self.clipping_range)
                          for w in weights))
        seed_reply_mods(self.spec, self.partition_id, int(config["server-round"]))   # secaggplus_mod rounds it next
        return weights, n, {"train_loss": float(metrics["train_loss"]), PARTITION_ID_KEY: self.partition_id,
                            "num-examples": int(metrics["num-examples"]), CLIPPED_KEY: clipped}

    def evaluate(self, parameters, config):
        from fedaudit.federation.task import local_evaluate

        m = local_evaluate(self.spec, self.partition_id, parameters)
        return float(m["eval_loss"]), int(m["num-examples"]), {"eval_accuracy": float(m["eval_accuracy"])}


def _capture(folder: str, partition_id: int, server_round: int, received: list, trained: list) -> None:
    """Test hook: what a client received and the weights it trained, as they were before SecAgg+ masked them."""
    from pathlib import Path

    from fedaudit.rundir import atomic_save_npz

    path = Path(folder) / f"round_{server_round:04d}_client_{partition_id:04d}.npz"
    atomic_save_npz(path, **{f"received__{i:04d}": np.asarray(w) for i, w in enumerate(received)},
                    **{f"trained__{i:04d}": np.asarray(w) for i, w in enumerate(trained)})


def make_secure_client_app(spec, scenario: Scenario, weight_bound: float):
    """The ClientApp of a SecAgg+ run: ``secaggplus_mod`` outermost, then (central DP) the legacy clipping mod."""
    from flwr.client import ClientApp
    from flwr.client.mod import fixedclipping_mod, secaggplus_mod

    uniform = uniform_weights(scenario)
    mods = [secaggplus_mod]
    if scenario.dp.mode == "client":
        mods.append(fixedclipping_mod)

    def client_fn(context: Context):
        return _Client(spec, int(context.node_config["partition-id"]), uniform, float(weight_bound),
                       float(scenario.federation.secagg_clipping_range)).to_client()

    return ClientApp(client_fn=client_fn, mods=mods)
