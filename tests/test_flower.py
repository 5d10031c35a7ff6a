"""fedaudit.flower without a federation: the data split, the ClientApp mod, the strategy wrapper's bookkeeping."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, Metadata, MetricRecord, RecordDict

from fedaudit.errors import ConfigError, DataError, FedAuditError
from fedaudit.federation.strategy import AuditedStrategy, RoundUpdate
from fedaudit.flower import FederatedData, partition_id_mod
from fedaudit.flower.data import resolve_data
from fedaudit.flower.strategy import describe_strategy

RNG = np.random.default_rng(0)
X = RNG.random((100, 4)).astype(np.float32)
Y = np.arange(100) % 3


def message(kind="train", src=7, metrics=None, arrays=None) -> Message:
    md = Metadata(run_id=1, message_id="", src_node_id=src, dst_node_id=0, reply_to_message_id="", group_id="",
                  created_at=time.time(), ttl=60.0, message_type=kind)
    content = {}
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    return Message(content=RecordDict(content), metadata=md)


def context(**node_config) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


# ---- FederatedData ---------------------------------------------------------------------------------------------


def test_partition_is_seeded_and_covers_partitions_population_and_test():
    a = FederatedData.partition(X, Y, 4, "iid", population_fraction=0.25, test_fraction=0.2, seed=3)
    b = FederatedData.partition(X, Y, 4, "iid", population_fraction=0.25, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(a.ledger.owner, b.ledger.owner)      # ServerApp and ClientApps agree
    parts = [a.load_partition(k) for k in range(4)]
    pop, test = a.load_split("population"), a.load_split("test")
    assert sum(len(p[1]) for p in parts) + len(pop[1]) + len(test[1]) == 100
    assert len(pop[1]) == 25 and len(test[1]) == 20 and a.num_partitions == 4
    seen = np.concatenate([p[0] for p in parts] + [pop[0], test[0]])
    assert len(np.unique(seen, axis=0)) == 100                          # every record exactly once
    assert a.fractions() == (0.25, 0.2) and a.partitioner == "iid"
    c = FederatedData.partition(X, Y, 4, "dirichlet:0.5", seed=3)
    assert c.partitioner == "dirichlet:0.5" and not np.array_equal(a.ledger.owner, c.ledger.owner)


def test_from_partitions_keeps_exactly_the_records_given():
    data = FederatedData.from_partitions(X, Y, partitions=[np.arange(0, 30), np.arange(30, 50)],
                                         population=np.arange(50, 80), test=np.arange(90, 100))
    assert data.num_partitions == 2 and data.partitioner == "given" and len(data.y) == 90   # 80..89: in no set
    np.testing.assert_array_equal(data.load_partition(1)[0], X[30:50])
    np.testing.assert_array_equal(data.load_split("population")[1], Y[50:80])
    np.testing.assert_array_equal(data.load_split("test")[0], X[90:100])


@pytest.mark.parametrize("kwargs, words", [
    (dict(partitions=[[0, 1], [1, 2]], population=[5, 6], test=[7]), "record 1 is given twice"),
    (dict(partitions=[[0, 1]], population=[5, 500], test=[7]), "0..99"),
    (dict(partitions=[[0, 1]], population=[], test=[7]), "population: holds no record"),
    (dict(partitions=[], population=[5], test=[7]), "at least one partition"),
    (dict(partitions=[[0.5, 1]], population=[5], test=[7]), "integer indices"),
])
def test_from_partitions_rejects_overlaps_and_bad_indices(kwargs, words):
    with pytest.raises(DataError, match=words):
        FederatedData.from_partitions(X, Y, **kwargs)


def test_load_partition_and_split_name_what_is_allowed():
    data = FederatedData.partition(X, Y, 2)
    with pytest.raises(DataError, match="0..1"):
        data.load_partition(2)
    with pytest.raises(DataError, match="population, test"):
        data.load_split("train")


def test_a_partition_function_gets_the_clients_count_and_is_checked():
    data = resolve_data(lambda n: FederatedData.partition(X, Y, n), 3)
    assert data.num_partitions == 3
    with pytest.raises(DataError, match="num-partitions = 4"):
        resolve_data(FederatedData.partition(X, Y, 3), 4)
    with pytest.raises(DataError, match="report it"):
        resolve_data(lambda n: FederatedData.partition(X, Y, n), None)


# ---- the ClientApp mod -----------------------------------------------------------------------------------------


def test_mod_tags_train_replies_only_and_leaves_the_app_alone():
    calls = []

    def app(msg, ctx):
        calls.append(msg.metadata.message_type)
        return message(msg.metadata.message_type, metrics={"num-examples": 12, "train_loss": 0.5},
                       arrays=[np.ones(2)])

    reply = partition_id_mod(message("train"), context(**{"partition-id": 2, "num-partitions": 4}), app)
    assert dict(reply.content["metrics"]) == {"num-examples": 12, "train_loss": 0.5, "partition-id": 2,
                                              "num-partitions": 4}
    np.testing.assert_array_equal(reply.content["arrays"].to_numpy_ndarrays()[0], np.ones(2))
    reply = partition_id_mod(message("evaluate"), context(**{"partition-id": 2}), app)
    assert "partition-id" not in reply.content["metrics"]
    assert calls == ["train", "evaluate"]
    with pytest.raises(ValueError, match="--node-config"):
        partition_id_mod(message("train"), context(), app)


# ---- the strategy side -----------------------------------------------------------------------------------------


class _Inner:
    weighted_by_key = "num-examples"

    def __init__(self):
        self.seen = None

    def aggregate_train(self, server_round, replies):
        self.seen = [dict(next(iter(r.content.metric_records.values()))) for r in replies]
        return ArrayRecord([np.full(2, 9.0)]), MetricRecord({"train_loss": 1.0})


def test_audited_strategy_reads_and_removes_the_tags():
    inner, updates = _Inner(), []
    strategy = AuditedStrategy(inner, updates.append)
    strategy._round = RoundUpdate(round=1, previous=[np.zeros(2)])
    replies = [message(src=11, arrays=[np.ones(2)], metrics={"num-examples": 5, "partition-id": 1,
                                                             "num-partitions": 2}),
               message(src=12, arrays=[np.full(2, 2.0)], metrics={"num-examples": 7, "partition-id": 0,
                                                                   "num-partitions": 2})]
    strategy.aggregate_train(1, replies)
    # the inner strategy sees no tags, and the replies in the order of their partition ids (reproducible runs)
    assert inner.seen == [{"num-examples": 7}, {"num-examples": 5}]
    (u,) = updates
    assert u.num_partitions == 2 and u.examples == {1: 5, 0: 7} and np.isnan(u.train_loss[0])
    np.testing.assert_array_equal(u.clients[0][0], np.full(2, 2.0))
    np.testing.assert_array_equal(u.new[0], np.full(2, 9.0))
    strategy._round = RoundUpdate(round=2, previous=[np.zeros(2)])
    with pytest.raises(FedAuditError, match="partition_id_mod"):
        strategy.aggregate_train(2, [message(arrays=[np.ones(2)], metrics={"num-examples": 5})])


def test_strategies_are_described_as_a_scenario_describes_them():
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, FedMedian, FedProx

    assert describe_strategy(FedAvg(fraction_train=0.5)) == {"federation": {"strategy": "fedavg", "fraction": 0.5},
                                                             "dp": {}}
    assert describe_strategy(FedProx(proximal_mu=0.1))["federation"]["proximal_mu"] == 0.1
    assert describe_strategy(FedMedian())["federation"]["strategy"] == "flower:FedMedian"
    dp = describe_strategy(DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise_multiplier=0.8,
                                                                      clipping_norm=2.0, num_sampled_clients=2))
    assert dp["dp"] == {"mode": "server", "noise_multiplier": 0.8, "clipping_norm": 2.0}
    assert dp["federation"]["strategy"] == "fedavg"


def test_bad_audit_options_fail_when_the_strategy_is_built(tmp_path):
    keras = pytest.importorskip("keras")
    from flwr.serverapp.strategy import FedAvg

    from fedaudit.flower import audit_strategy

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    data = FederatedData.partition(X, Y, 2)
    with pytest.raises(ConfigError, match="audit.threat_models"):
        audit_strategy(FedAvg(), data=data, model=model, audit={"threat_models": ["nobody"]})
    with pytest.raises(ConfigError, match="training.epochs"):
        audit_strategy(FedAvg(), data=data, model=model, training={"epochs": 3})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("earlier results")
    with pytest.raises(ConfigError, match="--out"):
        audit_strategy(FedAvg(), data=data, model=model, out=tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "earlier results"
    s = audit_strategy(FedAvg(), data=data, model=model, out=tmp_path / "new")
    assert s.run_dir == (tmp_path / "new").resolve() and not (tmp_path / "new").exists()   # nothing written yet
