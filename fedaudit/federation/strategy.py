"""Strategies from the scenario, and AuditedStrategy, which hands every round to an observer."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, Strategy

from fedaudit.config import Scenario
from fedaudit.errors import FedAuditError

log = logging.getLogger(__name__)

UNIFORM_WEIGHT_KEY = "uniform-weight"   # every client reports 1.0: uniform averaging (needed under DP)
PARTITION_ID_KEY = "partition-id"       # each client echoes its partition id in its train reply's metrics
NUM_PARTITIONS_KEY = "num-partitions"   # and, when it knows it (fedaudit.flower's mod), the number of partitions


@dataclass
class RoundUpdate:
    """One round as the aggregator saw it."""

    round: int
    previous: list                                   # global weights sent to the clients
    clients: dict = field(default_factory=dict)      # partition id -> returned weights
    examples: dict = field(default_factory=dict)     # partition id -> number of training examples
    train_loss: dict = field(default_factory=dict)   # partition id -> mean training loss
    failed: list = field(default_factory=list)       # partition ids (or node ids, if never seen) that failed
    new: list | None = None                          # the aggregated global weights
    started: float = 0.0
    num_partitions: int | None = None                # as the clients reported it (None: not reported)


def _train_metrics(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted mean of the clients' training loss (the partition id each client echoes is not averaged)."""
    losses, weights = [], []
    for content in replies:
        metrics = next(iter(content.metric_records.values()))
        losses.append(float(metrics["train_loss"]))
        weights.append(float(metrics[weighted_by_key]))
    return MetricRecord({"train_loss": float(np.average(losses, weights=weights))})


def build_strategy(scenario: Scenario, sampled: int) -> Strategy:
    """The Flower strategy the scenario names, sampling every client it asks for from round 1 on."""
    f = scenario.federation
    common = dict(fraction_train=f.fraction, fraction_evaluate=0.0, min_train_nodes=sampled,
                  min_available_nodes=f.clients, train_metrics_aggr_fn=_train_metrics)
    if scenario.dp.mode != "none":
        # DP-FedAvg's noise (noise_multiplier * clipping_norm / sampled) bounds one client's influence only when
        # the clipped updates are averaged uniformly; weighting by example counts would let a large client move
        # the average by more than clipping_norm / sampled. Every client echoes a weight of 1 under this key.
        common["weighted_by_key"] = UNIFORM_WEIGHT_KEY
    lr = f.server_learning_rate
    if f.strategy == "fedavg":
        strategy = FedAvg(**common)
    elif f.strategy == "fedprox":
        strategy = FedProx(proximal_mu=f.proximal_mu, **common)
    elif f.strategy == "fedadam":
        strategy = FedAdam(eta=lr or 0.01, eta_l=f.learning_rate, **common)
    else:
        strategy = FedAvgM(server_learning_rate=lr or 1.0, server_momentum=f.server_momentum, **common)
    return wrap_dp(scenario, strategy, sampled)


def wrap_dp(scenario: Scenario, strategy: Strategy, sampled: int) -> Strategy:
    dp = scenario.dp
    if dp.mode == "none":
        return strategy
    from flwr.serverapp.strategy import (DifferentialPrivacyClientSideFixedClipping,
                                         DifferentialPrivacyServerSideFixedClipping)

    cls = DifferentialPrivacyServerSideFixedClipping if dp.mode == "server" else DifferentialPrivacyClientSideFixedClipping
    return cls(strategy, noise_multiplier=dp.noise_multiplier, clipping_norm=dp.clipping_norm,
               num_sampled_clients=sampled)


class AuditedStrategy(Strategy):
    """Wraps any strategy; after each aggregation hands the round (theta_prev, every theta_k with its
    partition id, the new theta) to ``observer`` and returns at once.

    Each train reply's MetricRecord must carry the client's ``partition-id`` (fedaudit's ClientApp puts it there;
    a Flower App's own ClientApp gets it from :func:`fedaudit.flower.partition_id_mod`). The tags are read and
    removed before the inner strategy aggregates, so its metrics are those of an unaudited run.
    """

    def __init__(self, inner: Strategy, observer: Callable[[RoundUpdate], None]):
        self.inner = inner
        self.observer = observer
        self._round: RoundUpdate | None = None
        self._node_to_partition: dict[int, int] = {}

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._round = RoundUpdate(round=server_round, previous=arrays.to_numpy_ndarrays(), started=time.time())
        return self.inner.configure_train(server_round, arrays, config, grid)

    def _weight_key(self) -> str:
        inner = self.inner
        while not hasattr(inner, "weighted_by_key") and hasattr(inner, "strategy"):
            inner = inner.strategy        # Flower's DP wrappers hold the strategy they wrap
        return getattr(inner, "weighted_by_key", "num-examples")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        update = self._round
        weight_key = self._weight_key()
        for msg in replies:
            if msg.has_error():
                node = msg.metadata.src_node_id
                update.failed.append(self._node_to_partition.get(node, f"node-{node}"))
                continue
            metrics = next(iter(msg.content.metric_records.values()), None)
            if metrics is None or PARTITION_ID_KEY not in metrics:
                raise FedAuditError(
                    f"round {server_round}: a client's train reply has no {PARTITION_ID_KEY!r} in its metrics, so the "
                    "audit cannot tell whose model it is; allowed: a ClientApp with fedaudit.flower.partition_id_mod "
                    "among its mods (ClientApp(mods=[partition_id_mod]))")
            pid = int(metrics[PARTITION_ID_KEY])
            if NUM_PARTITIONS_KEY in metrics:
                update.num_partitions = int(metrics[NUM_PARTITIONS_KEY])
                del metrics[NUM_PARTITIONS_KEY]
            del metrics[PARTITION_ID_KEY]
            self._node_to_partition[msg.metadata.src_node_id] = pid
            update.clients[pid] = next(iter(msg.content.array_records.values())).to_numpy_ndarrays()
            update.examples[pid] = int(metrics.get("num-examples", metrics.get(weight_key, 1)))
            update.train_loss[pid] = float(metrics.get("train_loss", float("nan")))
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None:
            update.new = arrays.to_numpy_ndarrays()
        self.observer(update)
        return arrays, metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)
