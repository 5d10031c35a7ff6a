"""Strategies from the scenario, and AuditedStrategy, which hands every round to an observer."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, Strategy

from fedaudit.config import Scenario
from fedaudit.errors import FedAuditError
from fedaudit.federation.messages import replace_records

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
    # secure aggregation: ``clients`` stays empty (the server never holds a client's weights); the partition ids
    # that took part, and the unmasked sum when the new global model differs from it (central DP noise)
    participants: list = field(default_factory=list)
    aggregate: list | None = None
    # a deviating adversary's run: the model it would have sent had it followed the protocol (None: it did), and
    # what else the deviation left to record (fedaudit.federation.active)
    honest: list | None = None
    deviation: dict = field(default_factory=dict)


def _train_metrics(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted mean of the clients' training loss (the partition id each client echoes is not averaged)."""
    losses, weights = [], []
    for content in replies:
        metrics = next(iter(content.metric_records.values()))
        losses.append(float(metrics["train_loss"]))
        weights.append(float(metrics[weighted_by_key]))
    return MetricRecord({"train_loss": float(np.average(losses, weights=weights))})


def build_strategy(scenario: Scenario, sampled: int, canaries=None) -> Strategy:
    """The Flower strategy the scenario names, sampling every client it asks for from round 1 on; ``canaries`` (a
    :class:`fedaudit.federation.canary.CanaryAudit`) adds canary clients to each aggregate, under the DP wrapper."""
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
    if canaries is not None:
        from fedaudit.federation.canary import CanaryStrategy

        strategy = CanaryStrategy(strategy, canaries)
    return wrap_dp(scenario, strategy, sampled)


def wrap_dp(scenario: Scenario, strategy: Strategy, sampled: int) -> Strategy:
    dp = scenario.dp
    if dp.mode in ("none", "local"):     # local DP: the clients' LocalDpMod clips and noises
        return strategy
    from flwr.serverapp.strategy import (DifferentialPrivacyClientSideFixedClipping,
                                         DifferentialPrivacyServerSideFixedClipping)

    cls = DifferentialPrivacyServerSideFixedClipping if dp.mode == "server" else DifferentialPrivacyClientSideFixedClipping
    return cls(strategy, noise_multiplier=dp.noise_multiplier, clipping_norm=dp.clipping_norm,
               num_sampled_clients=sampled)


#: the stream tag that derives each round's draw of clients from the scenario's seed
_DRAW_TAG = 0xD8A


def draw_clients(seed: int, server_round: int, num_clients: int, k: int) -> list[int]:
    """The ``k`` clients (partition ids, sorted) of round ``server_round``, drawn from ``num_clients`` with the
    scenario's ``seed``: the same in every run and resume of the scenario (Flower samples *nodes* with an unseeded
    generator, and a simulation's node ids are random per run)."""
    if k > num_clients:
        raise FedAuditError(f"round {server_round}: {k} nodes asked to train, for {num_clients} clients")
    rng = np.random.default_rng([int(seed), int(server_round), _DRAW_TAG])
    return sorted(int(p) for p in rng.choice(int(num_clients), size=int(k), replace=False))


#: the stream tag of each round's central DP noise
_NOISE_TAG = 0xD9


def seed_round_noise(seed: int, server_round: int) -> None:
    """Seed NumPy's global generator, from which Flower's DP strategies draw the central noise, for round
    ``server_round`` from the scenario's ``seed``: the noise of a round is then the same whether the run got there
    in one go or resumed (seeded once at the start, a resumed run drew other noise than an uninterrupted one)."""
    np.random.seed([int(seed), int(server_round), _NOISE_TAG])


def failed_partitions(nodes: list, node_to_partition: dict, num_clients: int | None) -> list:
    """Partition ids of the failed ``nodes``, given the partition each node that ever replied reported
    (``node_to_partition``). A node that never replied has no known partition; when every client was asked
    (``num_clients`` given) and the failed unknown nodes are exactly as many as the partitions never seen in a
    reply, they are those partitions. Otherwise an unknown node is named ``node-<id>``. Only a reply tells a
    node's partition: this is worked out again each round, so a partition that comes back under a new node id
    is still named."""
    known = [node_to_partition[n] for n in nodes if n in node_to_partition]
    unknown = [n for n in nodes if n not in node_to_partition]
    if unknown and num_clients is not None:
        unseen = sorted(set(range(num_clients)) - set(node_to_partition.values()))
        if len(unseen) == len(unknown):
            return sorted(known + unseen)
    return sorted(known) + [f"node-{n}" for n in unknown]


class RunStopped(Exception):
    """Raised in the ServerApp's thread when a stop was requested (a signal): the round in progress is dropped."""


#: The reason of an error reply whose message never reached a client: it was sent to a client actor that Ray was
#: restarting (its process had died). Such a message is sent again; the client that was training when its
#: process died is a failure of that round.
NEVER_RAN = "The actor is restarting"
RESEND_SECONDS = 120.0


class RoundGrid(Grid):
    """The Grid a round runs on: stops waiting (raises :class:`RunStopped`) as soon as ``stop`` is set, and sends
    again the messages that never reached a client because its actor was being restarted.

    Flower's ``send_and_receive`` waits up to an hour for replies and its node sampling waits for nodes
    forever; this one polls the same way but checks ``stop`` between polls.
    """

    def __init__(self, grid: Grid, stop: threading.Event | None = None):
        self._grid = grid
        self._stop = stop if stop is not None else threading.Event()
        self.pull_interval = float(getattr(grid, "pull_interval", 0.1))

    def _check(self) -> None:
        if self._stop.is_set():
            raise RunStopped("stop requested")

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, *args, **kwargs):
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self):
        self._check()
        return self._grid.get_node_ids()

    def push_messages(self, messages):
        self._check()
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)

    def _wait(self, pending: set, end: float | None) -> list:
        replies: list = []
        while pending:
            self._check()
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (end is not None and time.time() >= end):
                break
            self._stop.wait(self.pull_interval)
        self._check()
        return replies

    def send_and_receive(self, messages, *, timeout: float | None = None):
        messages = list(messages)
        end = None if timeout is None else time.time() + timeout
        sent = {}
        for msg_id, msg in zip(self.push_messages(messages), messages):
            sent[str(msg_id)] = msg
        replies = self._wait(set(sent), end)
        resend_until = time.time() + RESEND_SECONDS
        delay = 0.5
        while True:
            again = [r for r in replies if r.has_error() and NEVER_RAN in str(r.error.reason)]
            if not again or time.time() > resend_until or (end is not None and time.time() >= end):
                return replies
            log.warning("%d message(s) reached a client actor that Ray was restarting; sending again in %.1f s",
                        len(again), delay)
            self._stop.wait(delay)
            delay = min(2 * delay, 2.0)
            fresh = []
            for reply in again:
                old = sent[reply.metadata.reply_to_message_id]
                fresh.append(Message(content=old.content, message_type=old.metadata.message_type,
                                     dst_node_id=old.metadata.dst_node_id, group_id=old.metadata.group_id))
            ids = [str(i) for i in self.push_messages(fresh)]
            sent.update(zip(ids, fresh))
            retried = {id(r) for r in again}
            replies = [r for r in replies if id(r) not in retried] + self._wait(set(ids), end)


def unwrap_strategy(strategy: Strategy) -> tuple[Strategy, Strategy | None]:
    """(the strategy under Flower's DP wrappers and :class:`~fedaudit.federation.canary.CanaryStrategy`, the DP
    wrapper met on the way or None). Both wrappers keep the strategy they wrap in ``.strategy``."""
    from flwr.serverapp.strategy import (DifferentialPrivacyClientSideFixedClipping,
                                         DifferentialPrivacyServerSideFixedClipping)

    from fedaudit.federation.canary import CanaryStrategy

    dp_wrappers = (DifferentialPrivacyServerSideFixedClipping, DifferentialPrivacyClientSideFixedClipping)
    dp = None
    while isinstance(strategy, (*dp_wrappers, CanaryStrategy)):
        if dp is None and isinstance(strategy, dp_wrappers):
            dp = strategy
        strategy = strategy.strategy
    return strategy, dp


def strategy_state(strategy: Strategy) -> dict:
    """The server optimiser's state across rounds (FedAvgM's momentum, FedAdam's moments) as named arrays."""
    inner, _ = unwrap_strategy(strategy)
    out = {}
    momentum = getattr(inner, "momentum_vector", None)
    if momentum is not None:
        out.update({f"momentum_vector__{i:04d}": np.asarray(v) for i, v in enumerate(momentum)})
    for name in ("m_t", "v_t"):
        moments = getattr(inner, name, None)
        if moments:
            out.update({f"{name}__{k}": np.asarray(v) for k, v in moments.items()})
    return out


def restore_strategy_state(strategy: Strategy, state: dict) -> None:
    """Put back what :func:`strategy_state` saved (into a freshly built strategy of the same scenario)."""
    inner, _ = unwrap_strategy(strategy)
    momentum = [state[k] for k in sorted(k for k in state if k.startswith("momentum_vector__"))]
    if momentum:
        inner.momentum_vector = [np.asarray(v) for v in momentum]
    for name in ("m_t", "v_t"):
        moments = {k.split("__", 1)[1]: np.asarray(v) for k, v in state.items() if k.startswith(name + "__")}
        if moments:
            setattr(inner, name, moments)


class AuditedStrategy(Strategy):
    """Wraps any strategy; after each aggregation hands the round (theta_prev, every theta_k with its
    partition id, the new theta) to ``observer`` and returns at once.

    Each train reply's MetricRecord must carry the client's ``partition-id`` (fedaudit's ClientApp puts it there;
    a Flower App's own ClientApp gets it from :func:`fedaudit.flower.partition_id_mod`). The tags are read and
    removed before the inner strategy aggregates, so its metrics are those of an unaudited run.

    ``round_offset``: rounds are numbered from ``round_offset + 1`` (a resumed run), for the inner strategy
    and the clients alike. ``stop``: once set, the run stops waiting for replies (:class:`RunStopped`).
    Replies are aggregated in the order of partition ids, not of arrival, so that a run is reproducible.
    ``assign``: (seed, number of clients) in fedaudit's own simulation, whose nodes train as whichever client the
    server names: the inner strategy samples the nodes, and each round's clients are drawn with the seed
    (:func:`draw_clients`), one to a node, so that a run and its resumes train the same clients every round.
    ``noise_seed``: the scenario's seed in fedaudit's own simulation: each round's central DP noise is drawn from
    it and the round (:func:`seed_round_noise`), so that a resumed run adds the noise an uninterrupted one adds.
    """

    def __init__(self, inner: Strategy, observer: Callable[[RoundUpdate], None], *, round_offset: int = 0,
                 stop: threading.Event | None = None, num_clients: int | None = None, active=None,
                 assign: tuple[int, int] | None = None, noise_seed: int | None = None):
        self.inner = inner
        self.active = active            # a deviating server's ServerMoves (fedaudit.federation.active), or None
        self.num_clients = num_clients
        self.observer = observer
        self.round_offset = int(round_offset)
        self.stop = stop
        self.assign = assign
        self.noise_seed = noise_seed
        self.current_round: int | None = None
        self._round: RoundUpdate | None = None
        self._node_to_partition: dict[int, int] = {}
        self._assigned: dict[int, int] = {}     # this round's {node id: client} when the server assigns them

    def start(self, grid: Grid, *args, **kwargs):
        return super().start(RoundGrid(grid, self.stop), *args, **kwargs)

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self.current_round = server_round
        self._round = RoundUpdate(round=server_round, previous=arrays.to_numpy_ndarrays(), started=time.time())
        if self.active is None:
            return self.train_messages(server_round, arrays, config, grid)
        return self.active.configure(self, self._round, arrays, config, grid)

    def train_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list:
        """The inner strategy's train messages of round ``server_round``, each naming its client when the server
        assigns them (``assign``)."""
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if self.assign is None:
            return messages
        from fedaudit.federation.task import ASSIGNED_CLIENT_KEY

        seed, num_clients = self.assign
        messages.sort(key=lambda m: m.metadata.dst_node_id)
        clients = draw_clients(seed, server_round, num_clients, len(messages))
        self._assigned = {m.metadata.dst_node_id: k for m, k in zip(messages, clients)}
        return [replace_records(m, config={ASSIGNED_CLIENT_KEY: k}) for m, k in zip(messages, clients)]

    def node_partitions(self) -> dict:
        """{node id: partition id}: this round's assignment when the server assigns the clients, else every node
        that has replied so far."""
        return dict(self._assigned) if self.assign is not None else dict(self._node_to_partition)

    def _weight_key(self) -> str:
        return getattr(unwrap_strategy(self.inner)[0], "weighted_by_key", "num-examples")

    @staticmethod
    def _order(msg: Message):
        if msg.has_error():
            return (1, 0)
        metrics = next(iter(msg.content.metric_records.values()), {})
        return (0, int(metrics.get(PARTITION_ID_KEY, 0)))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        server_round += self.round_offset
        replies = sorted(replies, key=self._order)
        update = self._round
        weight_key = self._weight_key()
        failed_nodes = []
        for msg in replies:
            if msg.has_error():
                failed_nodes.append(msg.metadata.src_node_id)
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
        update.failed = failed_partitions(failed_nodes, self.node_partitions(), self.num_clients)
        if self.active is not None:
            replies = self.active.aggregated_replies(self, update, replies)
        if self.noise_seed is not None:
            seed_round_noise(self.noise_seed, server_round)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None:
            update.new = arrays.to_numpy_ndarrays()
        self.observer(update)
        return arrays, metrics


    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round + self.round_offset, replies)
