"""Secure aggregation (Flower's SecAgg+): the server never holds one client's weights, and the audit says so."""

import json

import numpy as np
import pytest

from fedaudit.config import load_scenario, scenario_from_dict
from fedaudit.errors import ConfigError, FedAuditError

from conftest import SCENARIOS


@pytest.mark.parametrize("raw, key, says", [
    ({"federation": {"secure_aggregation": True}, "dp": {"mode": "server"}}, "dp.mode", "dp.mode = 'client'"),
    ({"federation": {"secure_aggregation": True, "strategy": "fedadam"}}, "federation.strategy", "fedavg, fedprox"),
    ({"federation": {"secure_aggregation": True, "clients": 4, "fraction": 0.25}}, "federation.secure_aggregation",
     "at least 2 clients per round"),
    ({"federation": {"secagg_modulus_range": 3 * 2 ** 22}}, "federation.secagg_modulus_range", "power of two"),
    ({"federation": {"secure_aggregation": True, "clients": 4, "secagg_quantization_range": 2 ** 31}},
     "federation.secagg_quantization_range", "overflows"),
])
def test_bad_secure_aggregation_combinations_are_one_line_errors(raw, key, says):
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(raw)
    message = str(err.value)
    assert message.startswith(key + ":") and says in message and "\n" not in message


def test_secure_aggregation_accepts_central_dp_with_client_clipping():
    s = scenario_from_dict({"federation": {"secure_aggregation": True, "strategy": "fedprox"},
                            "dp": {"mode": "client"}})
    assert s.federation.secure_aggregation and s.dp.mode == "client"
    from fedaudit.federation.secagg import build_legacy_strategy, max_weight

    built = build_legacy_strategy(s, 10, [np.zeros(3, dtype=np.float32)])
    assert type(built).__name__ == "DifferentialPrivacyClientSideFixedClipping"
    assert max_weight(s, np.array([0, 0, 1, -1])) == 1.0          # DP averages uniformly: every weight is 1
    plain = scenario_from_dict({"federation": {"secure_aggregation": True}})
    assert max_weight(plain, np.array([0, 0, 1, -1, 1, 1])) == 3.0  # the largest partition


def _fit_res(arrays, pid, n, clipped=0):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n,
                  {"partition-id": pid, "train_loss": 0.5, "num-examples": n, "secagg-clipped": clipped})


class _Proxy:
    def __init__(self, node_id):
        self.node_id = node_id


def test_audited_legacy_strategy_hands_the_observer_the_sum_and_who_took_part():
    from fedaudit.federation.secagg import AuditedLegacyStrategy, build_legacy_strategy
    from flwr.common import parameters_to_ndarrays

    from fedaudit.federation.strategy import RoundUpdate

    s = scenario_from_dict({"federation": {"secure_aggregation": True, "clients": 2}})
    theta = [np.zeros((2, 2), dtype=np.float32)]
    got = []
    strategy = AuditedLegacyStrategy(build_legacy_strategy(s, 2, theta), got.append, round_offset=3, num_clients=2)
    strategy._round = RoundUpdate(round=4, previous=theta)      # as configure_fit leaves it (round 1 + offset 3)
    strategy._sampled = {7: None, 8: None}
    summed = [np.full((2, 2), 0.25, dtype=np.float32)]          # what SecAgg+ sets as every reply's parameters
    arrays, metrics = strategy.aggregate_fit(1, [(_Proxy(8), _fit_res(summed, 1, 30)),
                                                 (_Proxy(7), _fit_res(summed, 0, 10))], [])
    assert np.allclose(parameters_to_ndarrays(arrays)[0], 0.25)
    (update,) = got
    assert update.clients == {} and update.participants == [0, 1] and update.examples == {0: 10, 1: 30}
    assert update.aggregate is None and update.failed == [] and metrics == {"train_loss": 0.5}
    strategy._round = RoundUpdate(round=5, previous=theta)
    with pytest.raises(FedAuditError, match="federation.secagg_clipping_range"):
        strategy.aggregate_fit(2, [(_Proxy(8), _fit_res(summed, 1, 30, clipped=4)),
                                   (_Proxy(7), _fit_res(summed, 0, 10))], [])


def _captured(folder, round_):
    """{client: (received, trained)} as each client saved it before SecAgg+ masked it."""
    out = {}
    for path in sorted(folder.glob(f"round_{round_:04d}_client_*.npz")):
        with np.load(path, allow_pickle=False) as z:
            received = [z[k] for k in sorted(z.files) if k.startswith("received__")]
            trained = [z[k] for k in sorted(z.files) if k.startswith("trained__")]
        out[int(path.stem.rsplit("_", 1)[1])] = (received, trained)
    return out


def _flat(weights):
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


def _run(tmp_path, monkeypatch, overrides, audit: bool):
    """One SecAgg+ federation, recording what the strategy's aggregate_fit and the observer were handed."""
    from fedaudit.federation import secagg
    from fedaudit.federation.driver import RoundLog, prepare, run_federation, write_inputs

    seen, updates = {}, []
    monkeypatch.setattr(secagg.AuditedLegacyStrategy, "record_seen",
                        lambda self, r, arrays: seen.setdefault(r, []).extend(arrays))
    s = load_scenario(SCENARIOS / "quickstart.toml", overrides)
    prepared = prepare(s)
    run_dir, capture = tmp_path / "run", tmp_path / "capture"
    capture.mkdir()
    write_inputs(run_dir, prepared)

    def sink_factory(p, r):
        if audit:
            from fedaudit.auditor import auditor_sink

            inner = auditor_sink(p, r)
        else:
            inner = RoundLog(r)

        class Recording:
            def __call__(self, update, record):
                updates.append(update)
                inner(update, record)

            def finish(self):
                return inner.finish()

        return Recording()

    run_federation(prepared, run_dir, sink_factory=sink_factory, progress=False, capture_dir=str(capture))
    return prepared, run_dir, capture, seen, updates


@pytest.mark.ray
def test_secagg_run_never_hands_the_server_a_clients_weights(tmp_path, monkeypatch):
    prepared, run_dir, capture, seen, updates = _run(tmp_path, monkeypatch, {
        "federation.clients": 3, "federation.rounds": 2, "federation.local_epochs": 2,
        "federation.secure_aggregation": True, "audit.attacks": ["loss", "blackbox"]}, audit=True)
    owner = prepared.ledger.owner
    assert [u.round for u in updates] == [1, 2]
    for u in updates:
        assert u.clients == {} and u.participants == [0, 1, 2] and u.aggregate is None
        clients = _captured(capture, u.round)
        assert sorted(clients) == [0, 1, 2]
        assert all(np.array_equal(_flat(rec), _flat(u.previous)) for rec, _ in clients.values())
        trained = {k: _flat(t) for k, (_, t) in clients.items()}
        # every array list the strategy received is the one aggregate: none is a client's own weights
        lists = [_flat(a) for a in seen[u.round]]
        assert len(lists) == 3
        for arr in lists:
            assert np.array_equal(arr, lists[0])
            for k, w in trained.items():
                assert np.max(np.abs(arr - w)) > 1e-3, f"round {u.round}: the strategy saw client {k}'s weights"
        # ... and it is the FedAvg of the clients' weights (weighted by examples) up to SecAgg+'s quantisation
        n = np.array([np.sum(owner == k) for k in sorted(trained)], dtype=np.float64)
        fedavg = sum(n[i] * trained[k] for i, k in enumerate(sorted(trained))) / n.sum()
        spread = min(np.max(np.abs(fedavg - w)) for w in trained.values())
        err = np.max(np.abs(lists[0] - fedavg))
        assert err < 1e-4 and err < spread / 100, (err, spread)
        assert np.allclose(_flat(u.new), lists[0])
    # the auditor had no per-client models: the server view is the attack on the aggregate
    with np.load(run_dir / "audit" / "round_0002.npz", allow_pickle=False) as z:
        assert "server__clients" not in z.files and "server__source_loss" not in z.files
        assert "server__eligible" in z.files
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["server"]["view"] for r in rows] == ["aggregate-only"] * 2
    assert all("source_inference" not in r["server"] and r["clients"] == [0, 1, 2] for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["secure_aggregation"]["server_view"] == "aggregate-only"
    assert summary["threat_models"]["server"]["view"] == "aggregate-only"
    assert summary["source_inference"] is None
    assert not (run_dir / "audit" / "source_inference.csv").exists()
    assert sorted((run_dir / "checkpoints").glob("round_*.npz"))        # checkpoints per round, as without SecAgg
    from fedaudit.report import build_report

    build_report(run_dir)
    html = (run_dir / "report.html").read_text()
    assert "secure aggregation" in html and "source inference does not apply" in html
    assert "Source inference</strong> (server)" not in html


@pytest.mark.ray
def test_secagg_with_central_dp_sums_clipped_updates_then_adds_noise(tmp_path, monkeypatch):
    clip = 0.5
    prepared, run_dir, capture, seen, updates = _run(tmp_path, monkeypatch, {
        "federation.clients": 3, "federation.rounds": 2, "federation.local_epochs": 1,
        "federation.secure_aggregation": True, "dp.mode": "client", "dp.clipping_norm": clip,
        "dp.noise_multiplier": 0.5, "audit.enabled": False}, audit=False)
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["clients"] == [0, 1, 2] for r in rows)
    for u in updates:
        assert u.clients == {} and u.aggregate is not None
        clients = _captured(capture, u.round)
        prev = _flat(u.previous)
        deltas = [_flat(t) - prev for _, t in clients.values()]
        clipped = [d * min(1.0, clip / np.linalg.norm(d)) for d in deltas]
        assert max(np.linalg.norm(d) for d in deltas) > clip       # the clipping did something
        expected = prev + np.mean(clipped, axis=0)                 # uniform average of the clipped updates
        summed = _flat(u.aggregate)
        assert np.max(np.abs(summed - expected)) < 1e-4
        assert all(np.max(np.abs(summed - _flat(t))) > 1e-3 for _, t in clients.values())
        # the server's noise: std noise_multiplier * clip / clients per weight, after the server saw the sum
        noise = _flat(u.new) - summed
        assert abs(np.std(noise) - 0.5 * clip / 3) < 0.2 * (0.5 * clip / 3)


def test_auditor_under_secure_aggregation_attacks_the_sum_the_server_computed(tmp_path):
    """No Ray: the server's view is the attack on the aggregate (before central DP noise), never a client's model."""
    from test_auditor import new_core, simulate, tiny_scenario

    from fedaudit.auditor import aggregate_run
    from fedaudit.auditor.state import load_round, round_path

    prepared, rounds = simulate(tiny_scenario(secure_aggregation=True))
    core = new_core(prepared, tmp_path)
    rng = np.random.default_rng(0)
    for r, previous, clients, summed in rounds:
        noised = [w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in summed]   # central DP's noise
        record = {"round": r, "clients": sorted(clients)}
        out = core.observe(r, previous, {}, noised, record, aggregate=summed)
        assert out["server"]["view"] == "aggregate-only" and "source_inference" not in out["server"]
        assert [c["client"] for c in out["server"]["clients"]] == sorted(clients)
        arrays = load_round(round_path(tmp_path, r))
        assert not any(k.startswith("server__") and ("clients" in k or "source" in k or "pop_" in k) for k in arrays)
        # the server scored every record under the sum, the participant under the noised global model
        assert not np.allclose(arrays["server__loss"], arrays["participant__loss"])
    plain = tmp_path / "plain"
    core = new_core(prepared, plain)
    r, previous, clients, summed = rounds[-1]
    out = core.observe(r, previous, {}, summed, {"round": r, "clients": sorted(clients)})
    assert out["server"]["auc"] == out["participant"]["auc"]        # without DP: the same model, the same attack
    summary = aggregate_run(tmp_path)
    assert summary["secure_aggregation"]["server_view"] == "aggregate-only"
    assert summary["threat_models"]["server"]["view"] == "aggregate-only" and summary["source_inference"] is None
    assert (tmp_path / "clients.csv").read_text().count("\n") == 1 + len(clients)


def test_a_clients_quantised_reply_does_not_depend_on_what_drew_from_numpys_generator_before(monkeypatch):
    """SecAgg+ quantises each reply by stochastic rounding from NumPy's global generator; the client seeds it from
    the run's seed, the round and its partition, so a run of one seed sums the same integers every time."""
    from types import SimpleNamespace

    from flwr.common.secure_aggregation.quantization import quantize

    from fedaudit.federation import secagg, task

    trained = [np.linspace(-1, 1, 500).reshape(20, 25), np.linspace(0, 0.3, 7)]
    monkeypatch.setattr(task, "local_train", lambda *a: ([w.copy() for w in trained],
                                                          {"train_loss": 0.1, "num-examples": 10}))

    def reply(seed, partition, round_, before):
        np.random.seed(before)              # whatever drew from the global generator before
        client = secagg._Client(SimpleNamespace(seed=seed), partition, False, 10.0, 8.0)
        weights, _, _ = client.fit([np.zeros_like(w) for w in trained], {"server-round": round_})
        return np.concatenate([q.ravel() for q in quantize(weights, 8.0, 2 ** 10)])

    first = reply(0, 1, 2, before=1)
    assert np.array_equal(first, reply(0, 1, 2, before=2))
    # the rounding is stochastic (not the same integers for another round, partition or seed)
    assert not np.array_equal(first, reply(0, 1, 3, before=1))
    assert not np.array_equal(first, reply(0, 2, 2, before=1))
    assert not np.array_equal(first, reply(1, 1, 2, before=1))
