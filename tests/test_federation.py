"""Federation runs on Ray (each starts and stops its own Ray session), plus the strategy set-up without Ray."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from fedaudit.config import load_scenario, scenario_from_dict
from fedaudit.data import Ledger
from fedaudit.errors import FedAuditError
from fedaudit.federation.strategy import build_strategy

from conftest import REPO, SCENARIOS
from procs import free_port, stop_processes


class NodeGrid:
    """The part of a Grid a strategy's configure_train uses: the connected nodes."""

    def __init__(self, nodes: int):
        self.nodes = list(range(101, 101 + nodes))

    def get_node_ids(self):
        return list(self.nodes)


@pytest.fixture
def in_a_run(monkeypatch):
    """Messages are built inside a run (Flower reads its ids when it creates one)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def train_messages(built, server_round: int = 3, nodes: int = 8) -> list:
    from flwr.app import ArrayRecord, ConfigRecord

    return list(built.configure_train(server_round, ArrayRecord([np.zeros(2, dtype=np.float32)]), ConfigRecord(),
                                      NodeGrid(nodes)))


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "fedavgm"])
def test_strategies_sample_every_client_they_ask_for(strategy, in_a_run):
    s = scenario_from_dict({"federation": {"strategy": strategy, "clients": 8, "fraction": 0.5,
                                           "proximal_mu": 0.25}})
    messages = train_messages(build_strategy(s, 4))
    assert len(messages) == 4 and len({m.metadata.dst_node_id for m in messages}) == 4
    for m in messages:
        config = m.content["config"]
        assert config["server-round"] == 3
        # FedProx's term reaches the clients in every round's config; the other strategies send none
        assert config.get("proximal-mu") == (0.25 if strategy == "fedprox" else None)


def test_dp_wraps_the_strategy(in_a_run):
    from fedaudit.federation.strategy import UNIFORM_WEIGHT_KEY, unwrap_strategy

    s = scenario_from_dict({"federation": {"strategy": "fedprox", "clients": 10},
                            "dp": {"mode": "server", "noise_multiplier": 0.3, "clipping_norm": 2.5}})
    built = build_strategy(s, 10)
    inner, wrapper = unwrap_strategy(built)
    assert wrapper is built and (wrapper.noise_multiplier, wrapper.clipping_norm) == (0.3, 2.5)
    assert type(inner).__name__ == "FedProx" and inner.weighted_by_key == UNIFORM_WEIGHT_KEY
    assert len(train_messages(built, nodes=10)) == 10      # the wrapper passes the sampling through
    plain, none = unwrap_strategy(build_strategy(scenario_from_dict({}), 10))
    assert none is None and plain.weighted_by_key == "num-examples"


def test_fedprox_term_pulls_a_clients_update_toward_the_global_model():
    """The client trains with FedProx's proximal term when the round's config carries mu: its update differs
    from plain local training and stays closer to the global weights it started from."""
    from fedaudit.federation.task import TrainSpec, local_train
    from fedaudit.models import build_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=64)
    spec = TrainSpec(data_ref=(x, y), owner=np.repeat([0, 1], 32), model_name="mlp",
                     model_options={"hidden": [16]}, input_shape=(6,), num_classes=3, optimizer="sgd",
                     learning_rate=0.5, local_epochs=5, batch_size=8, seed=0)
    start = [w + 0.3 * rng.normal(size=w.shape).astype(w.dtype)
             for w in build_model("mlp", (6,), 3, seed=0, hidden=[16]).get_weights()]

    def distance(weights):
        return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(weights, start))))

    plain, _ = local_train(spec, 1, start, 2, proximal_mu=0.0)
    again, _ = local_train(spec, 1, start, 2, proximal_mu=0.0)
    prox, _ = local_train(spec, 1, start, 2, proximal_mu=1.0)
    assert all(np.array_equal(a, b) for a, b in zip(plain, again))       # the same round trains the same
    assert not all(np.allclose(a, b) for a, b in zip(plain, prox))
    assert 0 < distance(prox) < 0.8 * distance(plain)


@pytest.mark.ray
def test_fedprox_run_with_partial_participation(tmp_path):
    from fedaudit.run import run_scenario

    s = load_scenario(SCENARIOS / "quickstart.toml", {
        "federation.clients": 4, "federation.rounds": 2, "federation.fraction": 0.5, "federation.local_epochs": 1,
        "federation.strategy": "fedprox", "federation.partition": "dirichlet:1.0", "audit.enabled": False})
    run_dir = run_scenario(s, out=tmp_path / "run", progress=False, report=False)
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(len(r["clients"]) == 2 and r["failed"] == [] for r in rows)
    # each round's clients are the scenario seed's draw, whichever nodes Flower sampled
    from fedaudit.federation.strategy import draw_clients

    assert [[int(c) for c in r["clients"]] for r in rows] == [draw_clients(s.federation.seed, r, 4, 2) for r in (1, 2)]
    assert all(0 <= r["model_accuracy"] <= 1 and r["loss"] > 0 for r in rows)
    ledger = Ledger.load(run_dir / "ledger.npz")
    assert ledger.num_clients == 4
    assert load_scenario(run_dir / "scenario.toml").federation.strategy == "fedprox"


@pytest.mark.ray
def test_quickstart_as_a_ray_cluster_job(tmp_path):
    """`ray job submit` against a head bound to 127.0.0.1, exactly as the README says."""
    bin_dir = Path(sys.executable).parent
    ray = shutil.which("ray", path=str(bin_dir)) or shutil.which("ray")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")     # as the README says: the head stays on 127.0.0.1
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "job-run"
    # A head of the test's own (its own ports and temp dir), stopped by the processes that name that temp dir:
    # `ray stop` would stop every Ray on the machine.
    temp_dir = tempfile.mkdtemp(prefix="fa-ray-")        # short: Ray's socket paths live under it
    dashboard = free_port()
    # Every Ray's job agent listens on 52365 unless told otherwise: with any other Ray on the machine (another
    # test's local one), this head's agent would fail to bind and no job could ever be submitted to it.
    agent_ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                    f"--port={free_port()}", f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}",
                    *agent_ports, "--num-cpus=2", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    try:
        def submit(out):
            command = [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir",
                       str(REPO), "--", "fedaudit", "run", "scenarios/quickstart.toml", "--out", str(out), "--set",
                       "audit.enabled=false", "-q"]
            deadline = time.monotonic() + 120  # the job agent comes up a few seconds after `ray start` returns
            while True:
                job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
                if "No available agent" not in job.stdout + job.stderr or time.monotonic() > deadline:
                    return job
                time.sleep(2)

        job = submit(out)
        finished = '"state": "finished"' in _read(out / "status.json")
        if job.returncode and "Aborted" in job.stdout + job.stderr and finished:
            # Once in several loaded runs, the job's process aborted in native code (glibc: a pthread mutex in
            # __pthread_tpp_change_priority) after the run had finished and recorded it, before its report: not
            # a failure of the run, whose files are complete. Submitted once more; a second failure fails the test.
            out = tmp_path / "job-run-again"
            job = submit(out)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout
    finally:
        assert stop_processes(lambda cmd: any(temp_dir in part for part in cmd)) > 0
        shutil.rmtree(temp_dir, ignore_errors=True)
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["clients"] == list(range(10)) for r in rows)
    assert rows[-1]["model_accuracy"] >= 0.85
    assert str(out) in job.stdout                     # the run directory is the job's last line of output
    owner = np.load(out / "ledger.npz")["owner"]
    assert set(np.unique(owner[owner >= 0])) == set(range(10))


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def test_strategy_state_survives_a_checkpoint(tmp_path):
    """FedAvgM's momentum and FedAdam's moments go into a checkpoint and come back into a new strategy."""
    from fedaudit.federation.strategy import restore_strategy_state, strategy_state
    from fedaudit.runstate import load_checkpoint, save_checkpoint

    rng = np.random.default_rng(0)
    for strategy, dp in (("fedavgm", "none"), ("fedadam", "server")):
        s = scenario_from_dict({"federation": {"strategy": strategy}, "dp": {"mode": dp}})
        built = build_strategy(s, 10)
        inner = getattr(built, "strategy", built)
        if strategy == "fedavgm":
            inner.momentum_vector = [rng.random((3, 2)), rng.random(2)]
        else:
            inner.m_t = {"0": rng.random((3, 2)), "1": rng.random(2)}
            inner.v_t = {"0": rng.random((3, 2)), "1": rng.random(2)}
        weights = [rng.random((3, 2)), rng.random(2)]
        save_checkpoint(tmp_path, 7, weights, strategy_state(built))
        round_, got_weights, state = load_checkpoint(tmp_path / "checkpoints" / "round_0007.npz")
        fresh = build_strategy(s, 10)
        restore_strategy_state(fresh, state)
        fresh_inner = getattr(fresh, "strategy", fresh)
        assert round_ == 7 and all(np.array_equal(a, b) for a, b in zip(got_weights, weights))
        for name in ("momentum_vector", "m_t", "v_t"):
            old, new = getattr(inner, name, None), getattr(fresh_inner, name, None)
            if isinstance(old, dict) and old:
                assert old.keys() == new.keys() and all(np.array_equal(old[k], new[k]) for k in old)
            elif isinstance(old, list):
                assert all(np.array_equal(a, b) for a, b in zip(old, new))


def test_the_server_draws_each_rounds_clients_with_the_seed_whichever_nodes_flower_samples(in_a_run):
    """In fedaudit's simulation the strategy names the client each sampled node trains as: the draw depends on the
    seed and the round only (Flower's node sample and node ids do not enter), each message gets its own config, the
    round's shared config is left as it was, and a deviating server finds its client's node in the draw."""
    from flwr.app import ArrayRecord, ConfigRecord

    from fedaudit.federation.strategy import AuditedStrategy, draw_clients
    from fedaudit.federation.task import ASSIGNED_CLIENT_KEY, client_of

    s = scenario_from_dict({"federation": {"clients": 8, "fraction": 0.5, "seed": 5}})
    draws = []
    for attempt in range(3):        # Flower samples other nodes each time
        strategy = AuditedStrategy(build_strategy(s, 4), lambda update: None, round_offset=2, assign=(5, 8))
        config = ConfigRecord({"lr": 0.1})
        messages = list(strategy.configure_train(1, ArrayRecord([np.zeros(2, dtype=np.float32)]), config,
                                                 NodeGrid(8)))
        assert ASSIGNED_CLIENT_KEY not in config and dict(config) == {"lr": 0.1, "server-round": 3}
        got = {m.metadata.dst_node_id: client_of(m.content["config"], {}) for m in messages}
        assert all(m.content["config"]["lr"] == 0.1 for m in messages)
        assert strategy.node_partitions() == got and len(set(got.values())) == 4
        draws.append(sorted(got.values()))
    assert draws[0] == draws[1] == draws[2] == draw_clients(5, 3, 8, 4)
    assert draw_clients(5, 4, 8, 4) != draws[0] or draw_clients(5, 5, 8, 4) != draws[0]   # rounds differ
    assert draw_clients(6, 3, 8, 4) != draws[0] or draw_clients(7, 3, 8, 4) != draws[0]   # seeds differ
    assert client_of({}, {"partition-id": 3}) == 3          # a node not told: its own partition
    plain = AuditedStrategy(build_strategy(s, 4), lambda update: None)     # a Flower app's: nodes train as themselves
    msgs = list(plain.configure_train(1, ArrayRecord([np.zeros(2, dtype=np.float32)]), ConfigRecord(), NodeGrid(8)))
    assert all(ASSIGNED_CLIENT_KEY not in m.content["config"] for m in msgs) and plain.node_partitions() == {}
    with pytest.raises(FedAuditError, match="9 nodes asked to train, for 8 clients"):
        draw_clients(5, 1, 8, 9)


def test_central_dp_noise_comes_from_the_seed_and_the_round_so_a_resume_adds_the_same(in_a_run):
    """Flower's central DP strategies draw their noise from NumPy's global generator: in fedaudit's simulation the
    audited strategy seeds it for each round from the scenario's seed, so round 3 gets the same noise after rounds 1
    and 2 as in a run resumed at round 3, whatever drew from the generator before, and other noise than round 2."""
    import time

    from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

    from fedaudit.federation.strategy import AuditedStrategy
    from fedaudit.federation.task import client_of

    s = scenario_from_dict({"federation": {"clients": 2, "seed": 5},
                            "dp": {"mode": "server", "noise_multiplier": 1.0, "clipping_norm": 1.0}})

    def reply(node: int, client: int) -> Message:
        md = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="", group_id="",
                      created_at=time.time(), ttl=60.0, message_type="train")
        metrics = {"num-examples": 5, "train_loss": 0.5, "uniform-weight": 1.0, "partition-id": client}
        return Message(content=RecordDict({"arrays": ArrayRecord([np.full(3, 0.1 * (client + 1), np.float32)]),
                                           "metrics": MetricRecord(metrics)}), metadata=md)

    def new_models(offset: int, rounds: int, seed: int = 5) -> list:
        updates = []
        strategy = AuditedStrategy(build_strategy(s, 2), updates.append, round_offset=offset, assign=(seed, 2),
                                   noise_seed=seed)
        for r in range(1, rounds + 1):
            sent = strategy.configure_train(r, ArrayRecord([np.zeros(3, np.float32)]), ConfigRecord(), NodeGrid(2))
            replies = [reply(m.metadata.dst_node_id, client_of(m.content["config"], {})) for m in sent]
            np.random.seed(100 + r)       # whatever drew from the global generator before: not the same
            strategy.aggregate_train(r, replies)
        return [u.new[0] for u in updates]

    uninterrupted, resumed = new_models(0, 3), new_models(2, 1)
    assert len(uninterrupted) == 3 and len(resumed) == 1
    np.testing.assert_array_equal(uninterrupted[2], resumed[0])
    noise = [m - 0.15 for m in uninterrupted]          # the clients' mean is 0.15 in every round
    assert np.abs(noise[1]).max() > 0.01 and not np.allclose(noise[1], noise[2])
    assert not np.allclose(new_models(2, 1, seed=6)[0], resumed[0])


def test_audited_strategy_numbers_rounds_on_after_a_resume():
    from flwr.app import ArrayRecord, ConfigRecord

    from fedaudit.federation.strategy import AuditedStrategy

    seen = []

    class Inner:
        def configure_train(self, server_round, arrays, config, grid):
            seen.append(server_round)
            return []

    strategy = AuditedStrategy(Inner(), lambda update: None, round_offset=4)
    strategy.configure_train(1, ArrayRecord([np.zeros(2)]), ConfigRecord(), None)
    assert seen == [5] and strategy.current_round == 5 and strategy._round.round == 5


def test_failed_clients_are_named_by_partition_when_every_client_was_asked():
    from fedaudit.federation.strategy import failed_partitions

    seen = {11: 0, 12: 2}
    assert failed_partitions([99], seen, 3) == [1]                  # the one partition never heard from
    assert failed_partitions([99, 11], seen, 3) == [0, 1]
    assert failed_partitions([99], seen, None) == ["node-99"]       # a sample of the clients: cannot tell
    assert failed_partitions([99, 98], seen, 3) == ["node-99", "node-98"]    # two unknown nodes, one partition


def test_a_partition_is_named_again_when_its_node_comes_back_under_a_new_id():
    """A failed node's partition is worked out from the replies alone, each round: a guess is never kept, so
    when partition 1's node fails again under another node id, it is still partition 1."""
    from fedaudit.federation.secagg import AuditedLegacyStrategy
    from fedaudit.federation.strategy import AuditedStrategy, failed_partitions

    seen = {11: 0, 12: 2}
    assert failed_partitions([99], seen, 3) == [1]
    assert seen == {11: 0, 12: 2}
    assert failed_partitions([98], seen, 3) == [1]
    for strategy in (AuditedStrategy(None, lambda update: None, num_clients=3),
                     AuditedLegacyStrategy(None, lambda update: None, num_clients=3)):
        strategy._node_to_partition.update(seen)
        assert failed_partitions([99], strategy._node_to_partition, strategy.num_clients) == [1]
        assert failed_partitions([98], strategy._node_to_partition, strategy.num_clients) == [1]


def test_a_fault_plan_reaches_the_clients_through_one_environment_variable(monkeypatch):
    from fedaudit import faults
    from fedaudit.federation.task import TrainSpec, local_train

    monkeypatch.delenv(faults.ENV, raising=False)
    plan = faults.FaultPlan(fail_clients={3: 2}, kill_clients={1: 5}, nan_clients={0: 1}, kill_auditor_after_round=2)
    spec = TrainSpec(data_ref=(np.zeros((4, 2), np.float32), np.zeros(4, np.int64)), owner=np.array([0, 1, 2, 3]),
                     model_name="mlp", model_options={}, input_shape=(2,), num_classes=2, optimizer="sgd",
                     learning_rate=0.1, local_epochs=1, batch_size=2, seed=0)
    assert faults.client_fault(3, 2) is None and not faults.auditor_should_die(2)
    with faults.injected(plan):
        assert faults.FaultPlan.from_json(os.environ[faults.ENV]) == plan
        assert [faults.client_fault(*at) for at in ((3, 2), (1, 5), (0, 1), (3, 3), (2, 2))] == [
            faults.RAISE, faults.KILL, faults.NAN, None, None]
        assert faults.auditor_should_die(2) and not faults.auditor_should_die(1)
        with pytest.raises(RuntimeError, match="client 3 failed in round 2"):
            local_train(spec, 3, [], 2)
        child = subprocess.run([sys.executable, "-c", "from fedaudit import faults; print(faults.client_fault(1, 5))"],
                               env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
        assert child.stdout.strip() == "kill", child.stderr[-2000:]
    assert faults.ENV not in os.environ and faults.client_fault(3, 2) is None
