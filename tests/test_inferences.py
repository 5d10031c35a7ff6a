"""Inferences beyond membership (fedaudit.inferences): the registry and its validation, and each inference's
known answers: nothing found when the update carries nothing, found when planted. In-process on digits, no Ray."""

from types import SimpleNamespace

import numpy as np
import pytest

from fedaudit.auditor.records import audit_records
from fedaudit.config import scenario_from_dict
from fedaudit.errors import ConfigError
from fedaudit.inferences import get_inference, inference_names
from fedaudit.inferences.base import FAMILIES, summarize_rounds
from fedaudit.inferences.labels import LabelRegressor, histogram, tv_distance


def scenario(**audit):
    return scenario_from_dict({"name": "inf", "data": {"dataset": "digits"}, "model": {"name": "mlp", "hidden": [32]},
                               "federation": {"clients": 3, "rounds": 1, "local_epochs": 3, "batch_size": 16,
                                              "learning_rate": 0.005, "seed": 0},
                               "audit": {"enabled": True, **audit}})


def test_registry_and_validation_name_the_allowed_inferences():
    assert "labels" in inference_names()
    assert scenario().audit.inferences == ["labels"]               # the default
    with pytest.raises(ConfigError, match=r"audit.inferences: unknown inference .colours.; allowed: labels, attributes"):
        scenario(inferences=["colours"])
    assert {get_inference(n).family for n in inference_names()} <= {k for k, _, _ in FAMILIES}


def test_regressor_recovers_a_linear_signal_and_shrinks_on_noise():
    rng = np.random.default_rng(0)
    props = rng.dirichlet(np.full(4, 0.3), size=80)
    feats = props @ rng.normal(size=(4, 6)) + 0.01 * rng.normal(size=(80, 6))
    reg = LabelRegressor.fit(feats[:60], props[:60])
    assert np.mean([tv_distance(p, t) for p, t in zip(reg.predict(feats[60:]), props[60:])]) < 0.1
    noise = LabelRegressor.fit(rng.normal(size=(60, 6)), props[:60])      # features that say nothing
    est = noise.predict(rng.normal(size=(20, 6)))
    assert np.allclose(est, est.mean(0), atol=0.1)                      # ~ the shadows' mean mix, whatever the input


@pytest.fixture(scope="module")
def planted():
    """Three clients on digits, client 0 holding one class (3); their updates from one round of local training."""
    from sklearn.datasets import load_digits

    from fedaudit.inferences.simulate import LocalSimulator

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(1)
    owner = np.full(y.size, -2)
    threes = rng.choice(np.flatnonzero(y == 3), 60, replace=False)
    owner[threes] = 0
    rest = rng.permutation(np.flatnonzero(owner == -2))
    owner[rest[:60]], owner[rest[60:120]], owner[rest[120:520]] = 1, 2, -1
    s = scenario()
    records = audit_records(owner, y, 3, folds=3, attack_fraction=0.5, seed=0)
    xa, ya = x[records.index], y[records.index]
    sim = LocalSimulator(s, (64,), 10)
    previous = sim.trainer.get_weights()
    clients = {k: sim.train(previous, xa[records.owner == k], ya[records.owner == k], seed=k) for k in range(3)}
    core = SimpleNamespace(records=records, num_classes=10, seed=0, scenario=s,
                           inference_data=lambda: (xa, ya), inference_simulator=lambda: sim)
    return core, previous, clients


def context(previous, clients, new=None, secure=False):
    return SimpleNamespace(round=1, previous=previous, clients=clients, new=new, aggregate=None,
                           record={"clients": [0, 1, 2]}, ids=sorted(clients), non_finite=[],
                           secure_aggregation=secure)


def test_labels_find_a_one_class_client_and_nothing_in_an_update_without_signal(planted):
    core, previous, clients = planted
    labels = get_inference("labels")
    out = labels.run(core, context(previous, clients))
    one = next(c for c in out["clients"] if c["client"] == 0)
    assert one["truth"][3] == 1.0 and one["baseline_tv"] > 0.8
    assert one["estimate"][3] > 0.6 and one["tv"] < one["baseline_tv"] / 2          # found
    assert out["mean_tv"] < out["mean_baseline_tv"]
    # an update that carries no label signal (the weights sent out plus noise): the class is not found
    rng = np.random.default_rng(5)
    noisy = {0: [w + 1e-3 * rng.standard_normal(w.shape).astype(np.float32) for w in previous]}
    blind = labels.run(core, context(previous, noisy))["clients"][0]
    assert blind["estimate"][3] < 0.3 and blind["tv"] > 0.6
    summary = summarize_rounds(["labels"], [{"round": 1, "inferences": {"labels": out}}])["labels"]
    assert summary["family"] == "property" and summary["client_rounds"] == 3
    assert "total variation" in labels.finding(summary)


def test_inferences_warmed_and_run_in_a_thread_give_the_numbers_of_a_fresh_run(planted):
    """An auditor that holds TensorFlow runs the inferences in a thread of its own process (no second process, no
    Ray needed for it), after warming them (the adversary's model built and traced before round 1): the results
    equal those of a fresh simulator run inline, and the warm-up built the simulator the round then uses."""
    import os

    from fedaudit.auditor.executors import RayExecutor
    from fedaudit.inferences.runner import (_SIMULATORS, InferenceInputs, InferenceRound, run_inferences,
                                            warm_inferences)

    core, previous, clients = planted

    def inputs(key):
        return InferenceInputs(core.scenario, core.records, core.inference_data(), 10, 0, (64,), key=key)

    ctx = InferenceRound(round=1, previous=previous, clients=clients, new=None, aggregate=None,
                         record={"clients": [0, 1, 2]}, ids=[0, 1, 2], secure_aggregation=False)
    warm = inputs("warm-thread")
    executor = RayExecutor(inferences_here=True)
    executor.warm_inferences(warm)
    done = executor.inferences(warm, ctx, ["labels"])()
    sim = _SIMULATORS["warm-thread"]
    assert done["pid"] == os.getpid() and done["results"]["labels"]["clients"]
    fresh = run_inferences(inputs("fresh-inline"), ctx, ["labels"])["results"]["labels"]
    assert _SIMULATORS["fresh-inline"] is not sim
    for a, b in zip(done["results"]["labels"]["clients"], fresh["clients"]):
        assert a["client"] == b["client"] and a["estimate"] == pytest.approx(b["estimate"], abs=1e-6)
    warm_inferences(warm)                       # warming again reuses the process's simulator
    assert _SIMULATORS["warm-thread"] is sim


def test_histogram_and_tv():
    assert tv_distance(histogram([0, 0, 1, 1], 2), [0.5, 0.5]) == 0
    assert tv_distance([1, 0], [0, 1]) == 1


@pytest.fixture(scope="module")
def attribute_data():
    """Binary records whose column 0 is independent of everything else (imputation can only guess) and random
    labels (the model can only memorise its members)."""
    rng = np.random.default_rng(0)
    x = (rng.random((600, 20)) < 0.5).astype(np.float32)
    y = rng.integers(0, 4, 600)
    member, fit = np.zeros(600, bool), np.zeros(600, bool)
    member[:200], fit[200:400] = True, True
    return x, y, member, fit


def memorising_model(x, y, member):
    import tensorflow as tf

    from fedaudit.models import build_model
    from fedaudit.models.training import train_model

    model = build_model("mlp", (20,), 4, seed=0, hidden=[128])
    train_model(model, x[member], y[member], epochs=80, batch_size=32, learning_rate=0.005)
    return lambda z: tf.nn.softmax(model(z, training=False)).numpy()


def test_attributes_found_when_memorised_and_no_advantage_without_the_attribute(attribute_data):
    from fedaudit.inferences.attributes import AttributeInference, infer_attribute

    x, y, member, fit = attribute_data
    out = infer_attribute(memorising_model(x, y, member), x, y, 0, member, fit, 4, seed=0)
    m, n = out["members"], out["nonmembers"]
    assert out["binary"] and m["records"] == 200 and n["records"] == 200
    assert 0.35 < m["imputation"]["accuracy"] < 0.65                     # the other columns say nothing
    assert m["white-box"]["advantage_ci"][0] > 0.1                        # found, on members
    assert m["white-box"]["auc"] > 0.8
    assert n["white-box"]["advantage_ci"][0] < 0 < n["white-box"]["advantage_ci"][1]    # not on non-members
    assert out["member_gap"]["white-box"] > 0.1
    assert "advantage" in AttributeInference().finding({"last": out, "last_round": None})
    from fedaudit.report.inferences import attribute_section

    html = attribute_section({"inferences": {"attributes": {"last": out, "last_round": None}}})
    assert "Attribute inference" in html and "imputation" in html and "members" in html
    # a model trained without the attribute (the column constant): no advantage over imputation
    blind = x.copy()
    blind[:, 0] = 0
    out = infer_attribute(memorising_model(blind, y, member), x, y, 0, member, fit, 4, seed=0)
    for group in ("members", "nonmembers"):
        for attack in ("white-box", "trained"):
            low, high = out[group][attack]["advantage_ci"]
            assert low < 0.05 and high > -0.05 and abs(out[group][attack]["advantage"]) < 0.1


def test_sensitive_attribute_is_validated():
    with pytest.raises(ConfigError, match="attributes.*needs audit.sensitive_attribute"):
        scenario(inferences=["labels", "attributes"])
    s = scenario(inferences=["attributes"], sensitive_attribute=3)
    assert s.audit.sensitive_attribute == "3"
    from fedaudit.inferences.attributes import resolve_column

    assert resolve_column(s.audit.sensitive_attribute, s) == 3
    with pytest.raises(ConfigError, match="column name, which needs a csv dataset"):
        resolve_column("age", s)


def fedsgd_case(noise: bool, inverted: int):
    """Three clients of one record each, one local SGD step (FedSGD, batch 1) on a small MLP over 8x8 digit
    images; ``noise``: their updates replaced by noise of the same scale (nothing of the record in them)."""
    from sklearn.datasets import load_digits

    from fedaudit.inferences.simulate import LocalSimulator

    s = scenario_from_dict({"name": "rec", "data": {"dataset": "digits", "options": {"image": True}},
                            "model": {"name": "mlp", "hidden": [32]},
                            "federation": {"clients": 3, "rounds": 1, "local_epochs": 1, "batch_size": 1,
                                           "learning_rate": 0.1, "optimizer": "sgd", "seed": 0},
                            "audit": {"enabled": True, "inferences": ["reconstruction"], "reconstruction_clients": inverted,
                                      "reconstruction_iterations": 100}})
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    owner = np.full(y.size, -2)
    owner[:3], owner[100:400] = [0, 1, 2], -1
    records = audit_records(owner, y, 3, folds=3, attack_fraction=0.5, seed=0)
    xa, ya = x[records.index], y[records.index]
    sim = LocalSimulator(s, (8, 8, 1), 10)
    previous = sim.trainer.get_weights()
    rng = np.random.default_rng(0)
    clients = {}
    for k in range(3):
        new = sim.train(previous, xa[records.owner == k], ya[records.owner == k], seed=k)
        if noise:
            new = [p + rng.standard_normal(p.shape).astype(np.float32) * (np.std(n - p) + 1e-6)
                   for p, n in zip(previous, new)]
        clients[k] = new
    core = SimpleNamespace(records=records, num_classes=10, seed=0, scenario=s, inference_data=lambda: (xa, ya),
                           inference_simulator=lambda: sim)
    return core, context(previous, clients)


def test_reconstruction_recovers_fedsgd_records_and_nothing_from_noise():
    from fedaudit.inferences.reconstruction import ReconstructionInference

    rec = ReconstructionInference()
    out = rec.run(*fedsgd_case(noise=False, inverted=2))
    assert out["image"] and len(out["clients"]) == 2
    assert out["reconstructed"] == 1.0 and out["psnr"] > 30 and out["baseline_reconstructed"] == 0.0
    assert all(c["attack"]["ssim"] > 0.9 for c in out["clients"])
    blind = rec.run(*fedsgd_case(noise=True, inverted=1))              # no better than the population's class means
    assert blind["reconstructed"] == 0.0 and blind["psnr"] <= blind["baseline_psnr"] + 1.0
    summary = rec.summarize([{"round": 1, **blind}])
    assert summary["fails"] and "fails" in rec.finding(summary)
    assert not rec.summarize([{"round": 1, **out}])["fails"]
    secagg = rec.run(SimpleNamespace(scenario=scenario()), SimpleNamespace(clients={}, secure_aggregation=True))
    assert "secure aggregation" in secagg["not_applicable"]


def test_reconstruction_scores_by_best_matching():
    from fedaudit.inferences.reconstruction import match, ssim

    rng = np.random.default_rng(0)
    real = rng.random((4, 8, 8, 1))
    assert match(real[::-1].copy(), real, True, 1.0)["reconstructed"] == 1.0      # order does not matter
    assert match(rng.random((4, 8, 8, 1)), real, True, 1.0)["reconstructed"] == 0.0
    assert ssim(real[0], real[0], 1.0) == pytest.approx(1.0)
    flat = (rng.random((3, 20)) < 0.5).astype(float)
    assert match(flat, flat, False, 1.0)["agreement"] == 1.0


@pytest.mark.ray
def test_a_run_writes_its_inferences_and_the_report_lists_every_family(tmp_path):
    import json

    from fedaudit.config import load_scenario
    from fedaudit.run import run_scenario
    from fedaudit.schema import RunSummary

    from conftest import SCENARIOS

    s = load_scenario(SCENARIOS / "quickstart.toml", {
        "federation.clients": 6, "federation.rounds": 2, "federation.local_epochs": 1, "audit.folds": 3,
        "audit.threat_models": ["server"], "audit.attacks": ["loss"],
        "audit.inferences": ["labels", "reconstruction"], "audit.reconstruction_iterations": 5})
    run_dir = run_scenario(s, out=tmp_path / "run", progress=False)
    line = json.loads((run_dir / "rounds.jsonl").read_text().splitlines()[0])
    assert {c["client"] for c in line["inferences"]["labels"]["clients"]} == set(range(6))
    summary = RunSummary.from_dict(json.loads((run_dir / "summary.json").read_text()))
    labels, rec = summary.inferences["labels"], summary.inferences["reconstruction"]
    assert labels.family == "property" and labels.metrics["client_rounds"] == 12
    assert rec.rounds == 2 and rec.metrics["client_rounds"] == 2 and rec.metrics["iterations"] == 5
    # they ran in one actor of the auditor's, kept for the run: the auditor's process (a Dense model's audit) never
    # loaded TensorFlow, and the actor's process did, once
    tasks = [json.loads(t)["inference_task"] for t in (run_dir / "audit" / "timing.jsonl").read_text().splitlines()]
    auditor = json.loads((run_dir / "audit" / "starts.jsonl").read_text().splitlines()[0])["pid"]
    assert len(tasks) == 2 and tasks[0]["pid"] == tasks[1]["pid"] != auditor
    assert all(t["cpu_seconds"] > 0 for t in tasks)
    assert json.loads((run_dir / "audit" / "aggregate_timing.json").read_text())["tensorflow_loaded"] is False
    html = (run_dir / "report.html").read_text()
    assert "Beyond membership" in html and "Data extraction" in html and "not measured" in html
    assert "Attribute inference" in html


def test_the_federation_mix_is_called_revealed_only_when_closer_than_the_population_mix():
    labels = get_inference("labels")
    worse = {"federation": {"mean_tv": 0.26, "mean_baseline_tv": 0.08, "last": {"from": "the aggregate"}}}
    better = {"federation": {"mean_tv": 0.02, "mean_baseline_tv": 0.08, "last": {"from": "the aggregate"}}}
    assert "no better than guessing" in labels.finding(worse)
    assert "closer than guessing" in labels.finding(better) and "no better" not in labels.finding(better)


def test_label_inference_reads_a_seeded_sample_of_clients_beyond_its_bound():
    from types import SimpleNamespace

    from fedaudit.inferences.labels import read_clients

    ctx = SimpleNamespace(clients={k: None for k in range(300)}, non_finite={7})
    few = read_clients(SimpleNamespace(clients={1: None, 2: None}, non_finite=set()), 50, np.random.default_rng(0))
    assert few == [1, 2]
    some = read_clients(ctx, 50, np.random.default_rng(0))
    assert len(some) == 50 == len(set(some)) and 7 not in some and some == sorted(some)
    assert some == read_clients(ctx, 50, np.random.default_rng(0))
