"""The audit at scale: linear work per round, client sampling, compact round arrays, NumPy signals of dense
models, and a real two-node Ray cluster whose audit tasks run on both nodes.

All but the last test run without Ray: rounds of a small federation are handed to
:class:`fedaudit.auditor.AuditCore` directly (see tests/test_auditor.py).
"""

import csv
import dataclasses
import json

import numpy as np
import pytest

from fedaudit.auditor import audit_records
from fedaudit.auditor.executors import split_jobs
from fedaudit.auditor.shard import Job, ShardPlan
from fedaudit.auditor.state import round_path
from fedaudit.bench.scale import exponent
from fedaudit.config import scenario_from_dict
from fedaudit.errors import ConfigError, FedAuditError
from fedaudit.rundir import read_jsonl

from test_auditor import new_core, simulate, tiny_scenario


def small_samples(prepared, population=60, source=50, **audit):
    s = prepared.scenario.with_overrides({"audit.population_sample": population, "audit.source_sample": source,
                                          **{f"audit.{k}": v for k, v in audit.items()}})
    return dataclasses.replace(prepared, scenario=s)


@pytest.fixture(scope="module")
def federation():
    return simulate(tiny_scenario(clients=6, rounds=2, local_epochs=10))


def test_samples_are_seeded_sized_and_stratified():
    rng = np.random.default_rng(1)
    owner = np.r_[np.repeat(np.arange(20), 15), np.full(400, -1)]
    labels = rng.integers(0, 10, owner.size)
    r = audit_records(owner, labels, 20, folds=4, attack_fraction=0.5, seed=3, population_sample=100,
                      source_sample=40)
    again = audit_records(owner, labels, 20, folds=4, attack_fraction=0.5, seed=3, population_sample=100,
                          source_sample=40)
    assert np.array_equal(r.population_sample, again.population_sample)
    assert r.population_sample.size == 100 and not r.member[r.population_sample].any()
    assert np.bincount(r.fold[r.population_sample], minlength=4).tolist() == [25, 25, 25, 25]
    assert r.source_sample.size == 40 and r.member[r.source_sample].all()
    every = audit_records(owner, labels, 20, folds=4, attack_fraction=0.5, seed=3, population_sample=10_000,
                          source_sample=10_000)                       # fewer records than asked: all of them
    assert every.population_sample.size == 400 and every.source_sample.size == 300
    # each round: members under their owner's model when it replied, every population record under some replier
    src = r.round_source([2, 5, 7], round_=4)
    assert set(src[r.member]) == {-1, 2, 5, 7} and np.all((src[r.member] >= 0) == np.isin(r.owner[r.member], [2, 5, 7]))
    assert set(src[~r.member]) <= {2, 5, 7} and np.array_equal(src, r.round_source([7, 2, 5], round_=4))
    keep = np.isin(r.source, [2, 5, 7]) & ~r.member                     # pseudo-owners that replied keep theirs
    assert np.array_equal(src[keep], r.source[keep])


def test_bad_sample_sizes_and_task_settings_name_the_key():
    for key, value, message in (("audit.population_sample", 1, "audit.population_sample"),
                                ("audit.source_sample", 0, "audit.source_sample"),
                                ("ray.audit_tasks", -1, "ray.audit_tasks"), ("ray.audit_cpus", -0.5, "ray.audit_cpus"),
                                ("audit.keep_round_arrays", "no", "audit.keep_round_arrays")):
        with pytest.raises(ConfigError, match=message):
            scenario_from_dict({}).with_overrides({key: value})


def test_round_work_is_linear_and_no_array_is_records_by_clients(federation, tmp_path):
    prepared, rounds = federation
    prepared = small_samples(prepared)
    core = new_core(prepared, tmp_path)
    out = core.observe(*rounds[0])
    r = core.records
    n, K, P, S = len(r), 6, r.population_sample.size, r.source_sample.size
    tasks = read_jsonl(tmp_path / "audit" / "timing.jsonl")[0]["tasks"]
    # every record once under the server (its source's model) and once under the participant's global model, plus
    # the population sample under each of the K client models and under the global model
    assert sum(t["rows"] for t in tasks) == n + K * P + n + P
    assert out["server"]["records"]["population_sample"] == P == 60
    assert out["server"]["source_inference"]["records"] == S == 50
    with np.load(round_path(tmp_path, 1)) as z:
        for key in z.files:
            shape = z[key].shape
            assert not (len(shape) >= 2 and shape[0] == n and K in shape[1:]), (key, shape)   # never records x clients
        assert z["server__pop_features"].shape == (K, P, len(z["feature_names"]))
        assert z["server__pop_features"].dtype == np.float16 and z["server__source_loss"].shape == (K, S)
        assert z["server__features"].shape == (n, len(z["feature_names"]))
    for c in out["server"]["clients"]:        # each client's members against the population sample, under its model
        assert 0 <= c["auc"] <= 1


def test_client_sampling_scores_records_in_the_rounds_their_owner_trained(federation, tmp_path):
    prepared, rounds = federation
    prepared = small_samples(prepared)
    core = new_core(prepared, tmp_path)
    sampled = {1: [0, 1, 2], 2: [2, 3]}            # clients 4 and 5 never train
    for rnd, previous, clients, new in rounds:
        part = {k: clients[k] for k in sampled[rnd]}
        out = core.observe(rnd, previous, part, new, {"round": rnd, "clients": sampled[rnd]})
        assert out["server"]["clients_audited"] == sampled[rnd]
        assert [c["client"] for c in out["server"]["clients"]] == sampled[rnd]
        trained = sorted(set(sum((sampled[t] for t in sampled if t <= rnd), [])))
        assert [c["client"] for c in out["participant"]["clients"]] == trained
        owner = core.records.owner
        assert out["participant"]["records"]["members"] == int(np.isin(owner, trained).sum())
    summary = core.finish()
    r = core.records
    never = np.isin(r.owner, [4, 5])
    assert summary["records"]["members_trained"] == int((r.member & ~never).sum())
    rows = list(csv.reader(open(tmp_path / "records.csv")))
    header, body = rows[0], rows[1:]
    assert header[-1] == "rounds_trained"
    by_record = {int(row[0]): row for row in body}
    for i in range(len(r)):
        row = by_record[int(r.index[i])]
        if r.member[i]:
            assert int(row[7]) == sum(int(r.owner[i]) in c for c in sampled.values())
            assert (row[4] == "") == bool(never[i])      # never trained: no server model ever scored it
        else:
            assert row[4] != "" and row[7] == ""         # every population record gets a risk
    clients = {int(row[0]): row for row in list(csv.reader(open(tmp_path / "clients.csv")))[1:]}
    assert clients[2][7] == "1 2" and clients[0][7] == "1"
    assert clients[4][7] == "" and clients[4][2] == "" and clients[5][2] == ""   # listed: never trained, no risk
    # the stacked attack reads each record's own rounds, right-aligned: a member of client 0 (round 1 only) and
    # one of client 3 (round 2 only) both in the last block; client 2's members in both
    from fedaudit.auditor.aggregate import _View, own_rounds, stack_slots
    from fedaudit.auditor.state import load_round

    data = {t: load_round(round_path(tmp_path, t)) for t in (1, 2)}
    view = _View("server", data, r, "whitebox")
    own = own_rounds(view, [1, 2])
    slots = stack_slots(own, 2)
    first = lambda k: np.flatnonzero(r.member & (r.owner == k))[0]
    assert slots[first(0)].tolist() == [-1, 0] and slots[first(3)].tolist() == [-1, 1]
    assert slots[first(2)].tolist() == [0, 1] and (slots[r.member & never] == -1).all()
    pop = ~r.member
    assert (slots[pop & (r.source == 2)] == [0, 1]).all() and (slots[pop & (r.source == 1)] == [-1, 0]).all()
    orphans = pop & np.isin(r.source, [4, 5])     # pseudo-owner never replied: the rounds of a client that did
    patterns = {(True, False), (True, True), (False, True)}                 # clients 0 and 1, 2, 3
    assert orphans.any() and {tuple(row) for row in own[orphans]} <= patterns
    again = own_rounds(_View("server", data, r, "whitebox"), [1, 2])
    assert np.array_equal(own, again)                        # drawn from the seed
    assert summary["threat_models"]["server"]["stacked_rounds"] == [1, 2]


def test_stack_slots_pick_calendar_rounds_under_full_participation():
    from fedaudit.auditor.aggregate import stack_slots
    from fedaudit.auditor.state import STACK_ROUNDS, stack_rounds

    for R in (1, 3, STACK_ROUNDS, 13, 20):
        slots = stack_slots(np.ones((4, R), dtype=bool), min(STACK_ROUNDS, R))
        assert (slots == np.array(stack_rounds(list(range(R))))).all()
        evenly = np.unique(np.round(np.linspace(0, R - 1, min(STACK_ROUNDS, R))).astype(int))
        assert stack_rounds(list(range(R))) == evenly.tolist()           # the calendar rule, written out
    own = np.zeros((3, 20), dtype=bool)
    own[0, [2, 5, 9]] = True
    own[1, :11] = True
    slots = stack_slots(own, STACK_ROUNDS)
    assert slots[0].tolist() == [-1] * 5 + [2, 5, 9] and (slots[2] == -1).all()
    assert slots[1, 0] == 0 and slots[1, -1] == 10 and len(set(slots[1])) == STACK_ROUNDS


def test_keep_round_arrays_false_keeps_what_the_aggregation_reads(federation, tmp_path):
    prepared, rounds = federation
    base = small_samples(prepared, attacks=["whitebox", "blackbox", "loss"])
    lean = small_samples(prepared, attacks=["whitebox", "blackbox", "loss"], keep_round_arrays=False)
    lean = dataclasses.replace(lean, scenario=lean.scenario.with_overrides({"federation.rounds": 12}))
    full = dataclasses.replace(base, scenario=base.scenario.with_overrides({"federation.rounds": 12}))
    summaries, sizes = [], []
    for p, d in ((full, tmp_path / "full"), (lean, tmp_path / "lean")):
        core = new_core(p, d)
        for rnd in rounds:
            core.observe(*rnd)
        summaries.append(core.finish())
        sizes.append(round_path(d, 1).stat().st_size)
        with np.load(round_path(d, 1)) as z:    # round 1 of 12 is among the stacked rounds: features kept
            assert "server__features" in z.files
        with np.load(round_path(d, 2)) as z:    # round 2 is not: only the scores the aggregation reads
            assert ("server__pop_features" in z.files) == (d.name == "full")
            assert ("server__pop_score__loss" in z.files) == (d.name == "full")
            assert "server__pop_score__whitebox" in z.files
    assert sizes[1] <= sizes[0] and summaries[1]["threat_models"]["server"]["stacked_rounds"] == [1]
    assert summaries[0]["threat_models"]["server"]["stacked_rounds"] == [1, 2]


def test_dense_signals_match_tensorflow():
    from fedaudit.auditor.dense import DenseProbe, describe_dense
    from fedaudit.auditor.features import ModelProbe

    rng = np.random.default_rng(0)
    for name, options, layers in (("mlp", {"hidden": [24, 12]}, ()), ("mlp", {"hidden": [24, 12]}, (2, "dense_1", 3)),
                                  ("mlp", {"hidden": [16], "activation": "tanh"}, ("dense_1",)),
                                  ("mlp", {"hidden": [8], "activation": "sigmoid"}, (1,))):
        tf_probe = ModelProbe(name, options, (20,), 5, seed=0, layers=layers)
        probe = DenseProbe(describe_dense(tf_probe.model, layers=layers))
        assert probe.feature_names == tf_probe.feature_names
        assert sum(n.startswith("act_") for n in probe.feature_names) == 3 * len(set(layers))
        x, y = rng.random((150, 20)).astype(np.float32), rng.integers(0, 5, 150)
        w0 = tf_probe.model.get_weights()
        ws = [[a + 0.05 * rng.standard_normal(a.shape).astype(np.float32) for a in w0] for _ in range(3)]
        b_tf, b_np = tf_probe.base(w0, x, y), probe.base(w0, x, y)
        for w, v in zip(ws, probe.view_many(ws, b_np, w0, x, y)):
            ref = tf_probe.view(w, b_tf, w0, x, y)
            np.testing.assert_allclose(v.features, ref.features, rtol=2e-3, atol=2e-4)
            np.testing.assert_allclose(v.loss, ref.loss, rtol=1e-4, atol=1e-5)
        # own rows of different lengths, padded together, give each model's own features
        items = [(w, x[:k], y[:k], b_np.take(np.arange(k)), True) for w, k in zip(ws, (7, 30, 1))]
        pop = (x[100:], y[100:], b_np.take(np.arange(100, 150)))
        src = (x[50:90], y[50:90], b_np.take(np.arange(50, 90)))
        for (v, sv), (w, ox, oy, ob, _) in zip(probe.views(items, w0, pop, src), items):
            alone = tf_probe.view(w, b_tf.take(np.r_[np.arange(len(oy)), np.arange(100, 150)]), w0,
                                  np.r_[ox, x[100:]], np.r_[oy, y[100:]])
            np.testing.assert_allclose(v.features, alone.features, rtol=2e-3, atol=2e-4)
            ref = tf_probe.view(w, b_tf.take(np.arange(50, 90)), w0, x[50:90], y[50:90])
            np.testing.assert_allclose(sv.features, ref.features, rtol=2e-3, atol=2e-4)
            np.testing.assert_allclose(sv.loss, tf_probe.losses(w, x[50:90], y[50:90]), rtol=1e-4, atol=1e-5)
    from fedaudit.models import build_model

    conv = build_model("cnn", (8, 8, 1), 3, filters=[4], dense=8)
    assert describe_dense(conv) is None                   # convolutions: the TensorFlow probe
    for bad, words in ((9, "audit.layers: layer 9 is out of range; allowed: 1..2 "),
                       ("nope", "audit.layers: the model has no layer named 'nope'")):
        with pytest.raises(FedAuditError, match=words):
            describe_dense(tf_probe.model, layers=[bad])
        with pytest.raises(FedAuditError, match=words):
            ModelProbe("mlp", {"hidden": [8]}, (20,), 5, layers=[bad])


def test_batched_tensorflow_signals_equal_one_model_at_a_time(monkeypatch):
    """The TensorFlow probe evaluates many client models per call (stacked weights under tf.vectorized_map):
    for a small CNN and an MLP, every model's signals and features equal those of one model at a time, also
    when a call holds one model."""
    import sys

    from fedaudit.auditor.features import ModelProbe, ProbeViews
    from fedaudit.signals.extract import extract_many

    extract_module = sys.modules["fedaudit.signals.extract"]

    rng = np.random.default_rng(3)
    for name, options, shape, layers in (("cnn", {"filters": [4], "dense": 8}, (8, 8, 1), (2,)),
                                         ("mlp", {"hidden": [12]}, (20,), ())):
        probe = ModelProbe(name, options, shape, 4, seed=0, layers=layers)
        x, y = rng.random((60, *shape)).astype(np.float32), rng.integers(0, 4, 60)
        w0 = probe.model.get_weights()
        ws = [[a + 0.05 * rng.standard_normal(a.shape).astype(np.float32) for a in w0] for _ in range(3)]
        many = extract_many(probe.model, ws, x, y, layers=probe.outputs, gradients=probe.dense, from_logits=True,
                            gradient_norms=probe.layers, layers_option="audit.layers")
        for w, s in zip(ws, many):          # the probe's own layers: one trace each
            ref = probe._extract(w, x, y)
            np.testing.assert_allclose(s.logits, ref.logits, rtol=1e-4, atol=1e-5)
            for layer in probe.layers:
                np.testing.assert_allclose(s.gradient_norms[layer], ref.gradient_norms[layer], rtol=1e-3, atol=1e-5)
            for layer in probe.dense:
                np.testing.assert_allclose(s.factors[layer].output_grads, ref.factors[layer].output_grads,
                                           rtol=1e-3, atol=1e-6)
            for layer in probe.outputs:
                np.testing.assert_allclose(s.layer_outputs[layer], ref.layer_outputs[layer], rtol=1e-4, atol=1e-5)
        base = probe.base(w0, x, y)
        items = [(w, x[:k], y[:k], base.take(np.arange(k)), True) for w, k in zip(ws, (5, 17, 0))]
        pop = (x[40:], y[40:], base.take(np.arange(40, 60)))
        src = (x[20:35], y[20:35], base.take(np.arange(20, 35)))
        batched, alone = probe.views(items, w0, pop, src), ProbeViews.views(probe, items, w0, pop, src)
        for (v, sv), (ref, sref), (w, *_) in zip(batched, alone, items):
            np.testing.assert_allclose(v.features, ref.features, rtol=2e-3, atol=2e-4)
            np.testing.assert_allclose(sv.features, sref.features, rtol=2e-3, atol=2e-4)
            np.testing.assert_allclose(v.loss, ref.loss, rtol=1e-4, atol=1e-5)
            # the source sample: every feature but the norms of layers that do not factorise (and their total)
            full = probe.view(w, base.take(np.arange(20, 35)), w0, x[20:35], y[20:35])
            left_out = [f"log_gnorm/{n}" for n in probe.layers if n not in probe.dense]
            if left_out:
                left_out.append("log_gnorm/total")
            cols = [probe.feature_names.index(c) for c in left_out]
            kept = [j for j in range(len(probe.feature_names)) if j not in cols]
            assert np.isnan(sv.features[:, cols]).all() and not np.isnan(full.features[:, cols]).any()
            np.testing.assert_allclose(sv.features[:, kept], full.features[:, kept], rtol=2e-3, atol=2e-4)
            assert (name == "cnn") == bool(cols)
        # one model in a call (one client's view, or the last of 33 clients' in calls of 32): the same features
        monkeypatch.setattr(extract_module, "MAX_MODELS_PER_CALL", 2)      # 3 models: calls of 2 and 1
        for models in (items, items[:1]):
            for (v, sv), (ref, sref) in zip(probe.views(models, w0, pop, src), alone):
                np.testing.assert_allclose(v.features, ref.features, rtol=2e-3, atol=2e-4)
                np.testing.assert_allclose(sv.features, sref.features, rtol=2e-3, atol=2e-4)
        monkeypatch.undo()
        if name == "cnn":       # [audit] source_gradients = "all": every gradient norm on the source sample too
            every = ModelProbe(name, options, shape, 4, seed=0, layers=layers, source_gradients="all")
            args = (ws[0], base.take(np.arange(20, 35)), w0, x[20:35], y[20:35])
            np.testing.assert_allclose(every.source_view(*args).features, every.view(*args).features,
                                       rtol=1e-6, atol=1e-6)


def test_a_warmed_probe_is_traced_and_computes_what_a_fresh_one_does():
    """The auditor traces its TensorFlow steps while the clients train round 1 (:func:`warm_probe`): afterwards the
    process's probe holds the traced batched steps (own rows and population sample; the source sample) and the
    one-model step, and its views equal those of a probe built anew."""
    import importlib

    from fedaudit.auditor.dense import describe_dense
    from fedaudit.auditor.features import ModelProbe
    from fedaudit.auditor.shard import ProbeSpec, probe_for, warm_probe
    from fedaudit.models import build_model

    steps = importlib.import_module("fedaudit.signals.extract")._STEPS
    spec = ProbeSpec("cnn", {"filters": [4], "dense": 8}, (8, 8, 1), 4, seed=0, layers=(2,))
    rng = np.random.default_rng(4)
    x, y = rng.random((40, 8, 8, 1)).astype(np.float32), rng.integers(0, 4, 40)
    warm_probe(spec, x, y)
    probe = probe_for(spec)
    traced = steps[probe.model]
    assert sum(k[-1] for k in traced) == 2 and sum(not k[-1] for k in traced) >= 1   # batched: own/pop, source
    w0 = probe.model.get_weights()
    ws = [[a + 0.05 * rng.standard_normal(a.shape).astype(np.float32) for a in w0] for _ in range(2)]
    fresh = ModelProbe("cnn", {"filters": [4], "dense": 8}, (8, 8, 1), 4, seed=0, layers=(2,))
    views = []
    for p in (probe, fresh):
        base = p.base(w0, x, y)
        items = [(w, x[:k], y[:k], base.take(np.arange(k)), True) for w, k in zip(ws, (3, 6))]
        views.append(p.views(items, w0, (x[20:], y[20:], base.take(np.arange(20, 40))),
                             (x[10:20], y[10:20], base.take(np.arange(10, 20)))))
    assert len(steps[probe.model]) == len(traced)                 # nothing traced again
    for (v, sv), (ref, sref) in zip(*views):
        np.testing.assert_allclose(v.features, ref.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sv.features, sref.features, rtol=1e-5, atol=1e-6)
    stack = describe_dense(build_model("mlp", (20,), 4, seed=0, hidden=[8]), (), ())
    mlp = ProbeSpec("mlp", {"hidden": [8]}, (20,), 4, seed=0, dense=stack)
    warm_probe(mlp, rng.random((4, 20)).astype(np.float32), y[:4])           # the NumPy probe: built, no TensorFlow
    assert type(probe_for(mlp)).__name__ == "DenseProbe"


def test_activation_features_of_a_conv_model_and_of_the_input():
    """The TensorFlow probe's activation features of any layer (a convolution's output is flattened); a Flatten
    before the Dense stack passes the input through, as the NumPy probe takes it."""
    from fedaudit.auditor.dense import DenseProbe, describe_dense
    from fedaudit.auditor.features import ModelProbe, activation_stats

    rng = np.random.default_rng(1)
    x, y = rng.random((40, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 40)
    probe = ModelProbe("cnn", {"filters": [4], "dense": 8}, (8, 8, 1), 3, seed=0, layers=[1])
    w0 = probe.model.get_weights()
    w1 = [a + 0.05 * rng.standard_normal(a.shape).astype(np.float32) for a in w0]
    v = probe.view(w1, probe.base(w0, x, y), w0, x, y)
    names = probe.feature_names
    conv_out = probe.model.layers[0](x).numpy().reshape(40, -1)
    lognorm, active = activation_stats(conv_out)
    np.testing.assert_allclose(v.features[:, names.index(f"act_lognorm/{probe.outputs[0]}")], lognorm, rtol=1e-5)
    np.testing.assert_allclose(v.features[:, names.index(f"act_active/{probe.outputs[0]}")], active, atol=1e-6)
    assert np.isfinite(v.features[:, names.index(f"act_gain/{probe.outputs[0]}")]).all()
    assert np.isnan(probe.view(w1, None, None, x, y).features[:, -1]).all()    # no theta_prev: no gain
    flat = ModelProbe("mlp", {"hidden": [6]}, (4, 5), 3, seed=0, layers=[1])    # Flatten, then Dense
    stack = describe_dense(flat.model, layers=[1])
    assert flat.model.layers[0].__class__.__name__ == "Flatten" and stack.outputs == (("mlp_flatten", 0),)
    xs, ys = rng.random((30, 4, 5)).astype(np.float32), rng.integers(0, 3, 30)
    w = flat.model.get_weights()
    np.testing.assert_allclose(DenseProbe(stack).view(w, None, None, xs, ys).features,
                               flat.view(w, None, None, xs, ys).features, rtol=2e-3, atol=2e-4)


def test_jobs_split_evenly_over_tasks():
    plan = ShardPlan(attacks=[], fold=np.zeros(10), calibration=np.zeros(10, bool),
                     population_sample=np.arange(50), source_sample=np.arange(20))
    jobs = [Job(k, np.arange(k % 7 + 1), source=True) for k in range(40)] + [Job("global", np.arange(400))]
    groups = split_jobs(jobs, 3, plan)
    assert sorted(sum(groups, [])) == list(range(41)) and len(groups) == 3
    cost = [sum(jobs[j].rows.size + 55 for j in g) for g in groups]
    assert max(cost) - min(cost) <= 400 + 55


def test_the_fitted_exponent_is_the_slope_on_log_axes():
    assert exponent([100, 300, 1000], [1.0, 3.0, 10.0]) == pytest.approx(1.0)
    assert exponent([100, 1000], [1.0, 100.0]) == pytest.approx(2.0)


@pytest.mark.ray
def test_multinode_audit_tasks_run_on_both_nodes_and_match_one_node(tmp_path):
    """Two Ray nodes on 127.0.0.1: the audit's tasks run on both; the results equal a one-node run's."""
    from ray.cluster_utils import Cluster

    from fedaudit.federation.runtime import pin_loopback
    from fedaudit.run import run_scenario

    scenario = scenario_from_dict({
        "name": "multinode", "data": {"dataset": "digits"}, "model": {"name": "mlp", "hidden": [32]},
        "federation": {"clients": 4, "rounds": 2, "local_epochs": 3, "seed": 0},
        "audit": {"enabled": True, "folds": 3, "population_sample": 200, "source_sample": 150,
                  "inferences": []},
        "ray": {"num_cpus": 2}})
    one = run_scenario(scenario, out=tmp_path / "one", progress=False, report=False)
    pin_loopback()                       # the nodes below listen on 127.0.0.1, and the run joins them there
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        two = run_scenario(scenario.with_overrides({"ray.address": cluster.address, "ray.num_cpus": 0}),
                           out=tmp_path / "two", progress=False, report=False)
    finally:
        cluster.shutdown()
    timing = read_jsonl(two / "audit" / "timing.jsonl")
    assert len(timing) == 2
    for row in timing:
        assert len(row["tasks"]) == 2 and len({t["node"] for t in row["tasks"]}) == 2     # one task on each node
    assert all(len(row["tasks"]) == 1 for row in read_jsonl(one / "audit" / "timing.jsonl"))
    lines = [read_jsonl(d / "rounds.jsonl") for d in (one, two)]
    for a, b in zip(*lines):
        for tm in ("server", "participant"):
            assert b[tm]["auc"] == pytest.approx(a[tm]["auc"], abs=1e-4)
            assert [c["auc"] for c in b[tm]["clients"]] == pytest.approx([c["auc"] for c in a[tm]["clients"]], abs=1e-3)
        assert b["server"]["source_inference"]["accuracy"] == pytest.approx(a["server"]["source_inference"]["accuracy"],
                                                                           abs=1e-3)
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    for tm in ("server", "participant"):
        assert s2["threat_models"][tm]["auc"] == pytest.approx(s1["threat_models"][tm]["auc"], abs=1e-4)
    r1, r2 = (np.genfromtxt(d / "records.csv", delimiter=",", skip_header=1) for d in (one, two))
    np.testing.assert_allclose(r2[:, 6], r1[:, 6], atol=1e-4)


def test_a_convolutional_federation_is_audited_with_its_inferences_in_the_auditors_process(tmp_path):
    """A CNN's signals need TensorFlow in the auditor: the auditor prepares them (and the label inference) while
    round 1 trains, and runs the inferences in a thread of its own process rather than in a second one; every
    round has its membership results and its label inference."""
    from fedaudit.run import run_scenario

    scenario = scenario_from_dict({
        "name": "cnn-audit", "data": {"dataset": "digits", "image": True},
        "model": {"name": "cnn", "filters": [4], "dense": 8},
        "federation": {"clients": 3, "rounds": 2, "local_epochs": 1, "seed": 0},
        "audit": {"enabled": True, "folds": 3, "population_sample": 100, "source_sample": 60,
                  "attacks": ["whitebox", "loss"], "label_clients": 3},
        "ray": {"num_cpus": 2}})
    run = run_scenario(scenario, out=tmp_path / "run", progress=False, report=False)
    auditor = [row["pid"] for row in read_jsonl(run / "audit" / "starts.jsonl")]
    timing = read_jsonl(run / "audit" / "timing.jsonl")
    assert len(auditor) == 1 and len(timing) == 2
    for row in timing:
        assert [t["pid"] for t in row["tasks"]] == auditor and row["inference_task"]["pid"] == auditor[0]
    for line in read_jsonl(run / "rounds.jsonl"):
        assert 0.0 <= line["server"]["auc"] <= 1.0 and "audit_error" not in line
        labels = line["inferences"]["labels"]
        assert "error" not in labels and [c["client"] for c in labels["clients"]] == [0, 1, 2]
        assert all(np.isfinite(c["tv"]) for c in labels["clients"])


def _sampled_rounds_without_signal(rounds=10, clients=50, per_round=5, seed=0):
    """A server view's saved rounds under client sampling in which no score carries membership: every record's
    score is N(0, 1) under every model. Members are scored when their owner trained, population records every
    round (under their pseudo-owner or a stand-in)."""
    from fedaudit.auditor.state import STACK_ROUNDS
    from fedaudit.schema import round_key

    assert rounds > STACK_ROUNDS // 2
    rng = np.random.default_rng(seed)
    owner = np.r_[np.repeat(np.arange(clients), 20), np.full(2000, -1)]
    r = audit_records(owner, rng.integers(0, 10, owner.size), clients, folds=4, attack_fraction=0.5, seed=seed,
                      population_sample=200, source_sample=50)
    data, round_clients = {}, {}
    for t in range(1, rounds + 1):
        ids = sorted(rng.choice(clients, per_round, replace=False).tolist())
        src = r.round_source(ids, t)
        loss = np.where(src >= 0, rng.exponential(1.0, len(r)), np.nan)
        data[t] = {round_key("server", "loss"): loss.astype(np.float32), round_key("server", "correct"): src >= 0,
                   round_key("server", "clients"): np.array(ids), round_key("server", "scored_by"): src,
                   round_key("server", "score", "loss"): np.where(src >= 0, rng.normal(size=len(r)), np.nan),
                   round_key("server", "pop_score", "loss"): rng.normal(size=(per_round, r.population_sample.size))}
        round_clients[t] = ids
    return r, data, round_clients


def test_across_rounds_under_client_sampling_no_signal_stays_at_chance():
    from fedaudit.auditor.aggregate import _aggregate_view, _View
    from fedaudit.metrics import summarize

    r, data, round_clients = _sampled_rounds_without_signal()
    out = _aggregate_view(_View("server", data, r, "loss"), ["loss"], np.array([]), round_clients)
    for name in ("stacked", "mean", "max", "last"):
        s = out["aggregations"][name]
        assert 0.44 < s.auc < 0.56 and s.tpr_at_1pct < 0.04, (name, s.auc, s.tpr_at_1pct)
    assert out["across_rounds"]["loss"].tpr_at_1pct < 0.04
    # what a mean over every round that scored a record gives: a population record's score averaged over ten
    # models against a member's over one or two separates them by their spread alone
    stacked = np.stack([data[t]["server__score__loss"] for t in data], axis=1)
    ok = np.isfinite(stacked).any(axis=1)                 # members whose owner never trained: never scored
    calendar = np.full(len(r), np.nan)
    calendar[ok] = np.nanmean(stacked[ok], axis=1)
    assert summarize(calendar[ok & r.member], calendar[ok & ~r.member]).tpr_at_1pct > 0.1
