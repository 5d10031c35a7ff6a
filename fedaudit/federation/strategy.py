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

log = logging.getLogger(__name__)

UNIFORM_WEIGHT_KEY = "uniform-weight"   # every client reports 1.0: uniform averaging (needed under DP)


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
        strategy = FedAdam(eta=lr, eta_l=f.learning_rate, **common)
    else:
        strategy = FedAvgM(server_learning_rate=lr, server_momentum=f.server_momentum, **common)
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
    partition id, the new theta) to ``observer`` and returns at once."""

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

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        update = self._round
        for msg in replies:
            if msg.has_error():
                node = msg.metadata.src_node_id
                update.failed.append(self._node_to_partition.get(node, f"node-{node}"))
                continue
            metrics = next(iter(msg.content.metric_records.values()))
            pid = int(metrics["partition-id"])
            self._node_to_partition[msg.metadata.src_node_id] = pid
            update.clients[pid] = next(iter(msg.content.array_records.values())).to_numpy_ndarrays()
            update.examples[pid] = int(metrics["num-examples"])
            update.train_loss[pid] = float(metrics["train_loss"])
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None:
            update.new = arrays.to_numpy_ndarrays()
        self.observer(update)
        return arrays, metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)
