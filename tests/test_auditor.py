"""The auditor: records and folds, cross-fitting, the per-round attack, aggregation, source inference, faults.

Everything but the last two tests runs without Ray: a tiny FedAvg federation is trained in this process and
its rounds are handed to :class:`fedaudit.auditor.AuditCore` directly. The two Ray tests are full runs: one
kills the auditor actor mid-run, the other has a client that fails and a client that returns NaN weights.
"""

import csv
import dataclasses
import json
import math

import numpy as np
import pytest

from fedaudit.auditor import AuditCore, aggregate_run, audit_records
from fedaudit.auditor.attack import ROUND_C, Logistic, cross_fit, sigmoid
from fedaudit.auditor.core import light_metrics, threshold_scores
from fedaudit.auditor.sources import source_inference
from fedaudit.auditor.state import merge_round, round_path
from fedaudit.config import load_scenario, scenario_from_dict
from fedaudit.errors import FedAuditError
from fedaudit.metrics import summarize
from fedaudit.rundir import read_jsonl

from conftest import SCENARIOS

RECORDS_HEADER = ["record", "client", "member", "label", "server", "participant", "risk", "rounds_trained"]
CLIENTS_HEADER = ["client", "records", "auc", "tpr_at_0_1pct", "mean_risk", "max_risk", "peak_round", "rounds"]
METRIC_KEYS = {"auc", "tpr_at_1pct", "tpr_at_0_1pct", "attack_accuracy"}


def tiny_scenario(hidden=(32,), **federation):
    fed = {"clients": 4, "rounds": 2, "local_epochs": 3, "batch_size": 32, "seed": 0, **federation}
    return scenario_from_dict({"name": "tiny", "data": {"dataset": "digits"},
                               "model": {"name": "mlp", "hidden": list(hidden)},
                               "federation": fed, "audit": {"enabled": True, "folds": 3}})


def simulate(scenario):
    """FedAvg in this process: a list of (round, previous, {client: weights}, new) and the prepared scenario."""
    from fedaudit.federation.driver import prepare
    from fedaudit.models import Trainer, build_model

    p = prepare(scenario)
    f, d = scenario.federation, p.dataset
    trainer = Trainer(build_model(scenario.model.name, d.input_shape, d.num_classes, seed=f.seed,
                                  **scenario.model.options), f.optimizer, f.learning_rate)
    weights, rounds = p.initial_weights, []
    for r in range(1, f.rounds + 1):
        clients = {}
        for k in range(f.clients):
            idx = p.ledger.client_indices(k)
            trainer.set_weights(weights)
            trainer.fit(d.x[idx], d.y[idx], epochs=f.local_epochs, batch_size=f.batch_size,
                        rng=np.random.default_rng([f.seed, k, r]))
            clients[k] = trainer.get_weights()
        sizes = [len(p.ledger.client_indices(k)) for k in sorted(clients)]
        replies = [clients[k] for k in sorted(clients)]
        new = [np.average(np.stack(layer), axis=0, weights=sizes) for layer in zip(*replies)]
        rounds.append((r, weights, clients, new))
        weights = new
    return p, rounds


@pytest.fixture(scope="module")
def federation():
    return simulate(tiny_scenario())


def new_core(prepared, run_dir):
    from fedaudit.federation.driver import write_inputs

    write_inputs(run_dir, prepared)
    d, ledger = prepared.dataset, prepared.ledger
    return AuditCore.from_dataset(run_dir, prepared.scenario, d.x, d.y, ledger.owner, ledger.num_clients)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


# --- records, folds, known records ------------------------------------------------------------


def test_audit_records_are_balanced_stratified_and_reproducible():
    rng = np.random.default_rng(0)
    owner = np.r_[np.repeat(np.arange(4), 50), np.full(120, -1), np.full(30, -2)]
    labels = rng.integers(0, 10, owner.size)
    r = audit_records(owner, labels, 4, folds=5, attack_fraction=0.5, seed=3)
    assert len(r) == 320 and np.all(r.owner == owner[r.index]) and np.all(r.label == labels[r.index])
    assert -2 not in r.owner                                            # test records are never audited
    assert r.known[r.member].sum() == r.known[~r.member].sum() == 60    # half of min(200, 120), balanced
    assert np.all(r.source[r.member] == r.owner[r.member])
    assert set(r.source[~r.member]) <= set(range(4))
    for fold in range(5):                                              # every fold has both kinds
        assert 30 <= np.sum(r.member & (r.fold == fold)) <= 50 and np.sum(~r.member & (r.fold == fold)) >= 20
    again = audit_records(owner, labels, 4, folds=5, attack_fraction=0.5, seed=3)
    assert all(np.array_equal(getattr(r, k), getattr(again, k)) for k in ("fold", "known", "source"))


def test_audit_needs_population_records():
    with pytest.raises(FedAuditError, match="population_fraction"):
        audit_records(np.r_[np.zeros(10, int), np.full(5, -2)], np.zeros(15, int), 1, folds=2, attack_fraction=0.5,
                      seed=0)


# --- the attack classifier and cross-fitting -------------------------------------------------


def test_logistic_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6)) * rng.uniform(0.1, 20, 6) + 5
    y = (x[:, 0] / x[:, 0].std() + rng.normal(size=300) > 1).astype(int)
    ours = Logistic(0.3).fit(x, y).decision_function(x)
    z = StandardScaler().fit_transform(x)
    ref = LogisticRegression(C=0.3, tol=1e-10, max_iter=1000).fit(z, y).decision_function(z)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_cross_fitting_scores_each_fold_with_an_attack_not_fitted_on_it():
    rng = np.random.default_rng(2)
    n = 400
    member = np.arange(n) < 200
    fold = rng.integers(0, 4, n)
    known = rng.random(n) < 0.5
    fit_rows = rng.normal(size=(n, 3)) + member[:, None] * 1.5
    score_rows = fit_rows.copy()
    scores = cross_fit(fit_rows, member, fold, known, score_rows)
    assert summarize(scores[member], scores[~member]).auc > 0.8
    # changing fold 0's training rows changes every other fold's scores, never fold 0's own
    altered = fit_rows.copy()
    altered[fold == 0] = rng.normal(size=((fold == 0).sum(), 3)) * 5
    again = cross_fit(altered, member, fold, known, score_rows)
    np.testing.assert_allclose(again[fold == 0], scores[fold == 0])
    assert not np.allclose(again[fold != 0], scores[fold != 0])


def test_cross_fitted_attack_is_at_chance_on_noise_and_finds_a_planted_leak_on_the_unknown_records():
    """The per-round attack (its penalty chosen on the known records) on the records and folds of a federation the
    size of purchase-small.toml (600
    members, 200 population, 100 + 100 known): 19 features of pure noise give AUC 0.5 on the records the adversary
    did not know, on average over draws (a single round of noise strays by about 0.03); a leak in one feature of
    30% of the members is found."""
    owner = np.r_[np.repeat(np.arange(5), 120), -np.ones(200, dtype=int), -2 * np.ones(200, dtype=int)]
    labels = np.arange(owner.size) % 10
    noise, planted = [], []
    for seed in range(40):
        rec = audit_records(owner, labels, 5, folds=5, attack_fraction=0.5, seed=seed)
        rng = np.random.default_rng(100 + seed)
        x = rng.normal(size=(len(rec), 19))
        unknown = ~rec.known
        s = cross_fit(x, rec.member, rec.fold, rec.known, c=ROUND_C)
        noise.append(summarize(s[rec.member & unknown], s[~rec.member & unknown]).auc)
        x[:, 3] += 3.0 * (rec.member & (rng.random(len(rec)) < 0.3))
        s = cross_fit(x, rec.member, rec.fold, rec.known, c=ROUND_C)
        planted.append(summarize(s[rec.member & unknown], s[~rec.member & unknown]).auc)
    assert len(rec) == 800 and rec.known.sum() == 200
    assert abs(np.mean(noise) - 0.5) < 0.015
    assert np.mean(planted) > 0.58 and np.mean(np.array(planted) > np.array(noise)) > 0.9


def test_the_per_round_penalty_is_chosen_on_the_known_records_alone():
    """A strong signal gets the weakest penalty, pure noise the strongest; the records the adversary does not know
    are never read by the choice (changing their rows changes neither the penalty nor the known records' scores)."""
    from fedaudit.auditor.attack import fit_folds

    owner = np.r_[np.repeat(np.arange(5), 120), -np.ones(200, dtype=int), -2 * np.ones(200, dtype=int)]
    rec = audit_records(owner, np.arange(owner.size) % 10, 5, folds=5, attack_fraction=0.5, seed=0)
    rng = np.random.default_rng(7)
    noise = rng.normal(size=(len(rec), 19))
    strong = noise + 2.0 * rec.member[:, None] * rng.uniform(0.5, 1.0, 19)
    chosen = {name: fit_folds(x, rec.member, rec.fold, rec.known, c=ROUND_C).c
              for name, x in (("noise", noise), ("strong", strong))}
    assert chosen == {"noise": min(ROUND_C), "strong": max(ROUND_C)}
    attack = fit_folds(strong, rec.member, rec.fold, rec.known, c=ROUND_C)
    altered = strong.copy()
    altered[~rec.known] = rng.normal(size=((~rec.known).sum(), 19)) * 10
    again = fit_folds(altered, rec.member, rec.fold, rec.known, c=ROUND_C)
    everyone = np.arange(len(rec))
    assert again.c == attack.c
    np.testing.assert_array_equal(again.score(everyone, strong), attack.score(everyone, strong))
    assert fit_folds(strong, rec.member, rec.fold, rec.known, c=0.3).c == 0.3       # one penalty: no choice


def test_cross_fitting_leaves_unavailable_rows_and_unfittable_folds_unscored():
    rng = np.random.default_rng(3)
    member = np.r_[np.ones(60, bool), np.zeros(60, bool)]
    fold = np.tile([0, 1, 2], 40)
    known = np.ones(120, bool)
    known[member & (fold != 2)] = False          # known members only in fold 2: fold 2's attack has none
    rows = rng.normal(size=(120, 2))
    rows[5] = np.nan                             # record 5 (fold 2) has no features this round
    rows[7] = np.nan                             # record 7 (fold 1) neither
    scores = cross_fit(rows, member, fold, known)
    assert np.isnan(scores[fold == 2]).all()
    assert np.isnan(scores[7]) and np.isfinite(np.delete(scores, 7)[np.delete(fold, 7) != 2]).all()


def test_light_metrics_agree_with_summarize():
    rng = np.random.default_rng(4)
    m, n = rng.normal(0.5, 1, 300), rng.normal(0, 1, 2000)
    full, light = summarize(m, n), light_metrics(m, n)
    for key in METRIC_KEYS:
        assert light[key] == pytest.approx(getattr(full, {"attack_accuracy": "accuracy"}.get(key, key)))
    assert math.isnan(light_metrics(m, n[:50])["tpr_at_1pct"])     # below 1/50: not measurable, as summarize


def test_source_inference_attributes_to_the_lowest_loss():
    owner = np.array([0, 0, 1, 1, 2, -1])
    loss = np.array([[0.1, 1, 1], [1, 0.1, 1], [1, 0.1, 1], [1, 0.2, 0.1], [0.5, 1, 0.1], [0.1, 0.1, 0.1]])
    out = source_inference(loss, owner, [0, 1, 2])
    assert {k: out[k] for k in ("accuracy", "chance", "records")} == {"accuracy": 0.6, "chance": pytest.approx(1 / 3),
                                                                       "records": 5}
    assert out["ci"][0] < 0.6 < out["ci"][1] and out["method"].startswith("lowest loss")
    # a score (higher: the source) decides instead, and the lowest loss stays reported beside it
    score = -loss.copy()
    score[3] = [0, 1, 0]                                 # record 3: its loss says client 2, its score client 1
    both = source_inference(loss, owner, [0, 1, 2], score)
    assert both["accuracy"] == 0.8 and both["lowest_loss"]["accuracy"] == 0.6
    loss[:, 2] = np.nan                              # client 2 did not reply: its member is not attributed
    out = source_inference(loss, owner, [0, 1])
    assert out["records"] == 4 and out["chance"] == 0.5 and out["accuracy"] == 0.75


def test_calibrated_source_inference_beats_the_lowest_loss_and_is_chance_without_learning(federation, tmp_path):
    """On purchase-like records (where a client's update carries its records' inputs) the calibrated attribution
    names a member's client clearly more often than the lowest loss; on the tiny digits federation, where little
    leaks, it is not below it; clients whose updates are noise unrelated to their records leave both at chance."""
    sc = scenario_from_dict({"name": "purchase", "data": {"dataset": "synthetic-purchase", "records": 600,
                                                          "features": 200, "classes": 10, "test_fraction": 0.25},
                             "model": {"name": "mlp", "hidden": [64]},
                             "federation": {"clients": 4, "rounds": 1, "local_epochs": 10, "seed": 0},
                             "audit": {"enabled": True, "folds": 3}})
    purchase, (first,) = simulate(sc)
    si = new_core(purchase, tmp_path / "purchase").observe(*first)["server"]["source_inference"]
    assert si["records"] == 300 and si["method"].startswith("calibrated")
    assert si["accuracy"] > si["lowest_loss"]["accuracy"] + 0.05 and si["ci"][0] > si["lowest_loss"]["accuracy"]
    prepared, rounds = federation
    core = new_core(prepared, tmp_path / "digits")
    for rnd in rounds:
        si = core.observe(*rnd)["server"]["source_inference"]
        assert si["accuracy"] > si["lowest_loss"]["ci"][0] and si["ci"][0] > 0.25
    summary = core.finish()["source_inference"]
    assert summary["accuracy"] > summary["lowest_loss"]["ci"][0] and summary["lowest_loss"]["method"].startswith("lowest")
    rng = np.random.default_rng(7)
    r, previous, clients, new = rounds[1]
    noise = {k: [p + 0.01 * np.std(p) * rng.standard_normal(p.shape).astype(np.float32) for p in previous]
             for k in clients}
    si = new_core(prepared, tmp_path / "null").observe(r, previous, noise, new)["server"]["source_inference"]
    for result in (si, si["lowest_loss"]):
        assert result["ci"][0] < 0.25 < result["ci"][1], result


# --- one round, as the server and as a participant ------------------------------------------


def test_observe_writes_both_threat_models_and_is_idempotent(federation, tmp_path):
    prepared, rounds = federation
    core = new_core(prepared, tmp_path)
    for r, previous, clients, new in rounds:
        out = core.observe(r, previous, clients, new, {"round": r, "accuracy": 0.5})
        for tm in ("server", "participant"):
            assert out[tm]["attack"] == "whitebox" and METRIC_KEYS <= set(out[tm])
            assert set(out[tm]["attacks"]) == {"whitebox", "blackbox", "loss"}
            assert [c["client"] for c in out[tm]["clients"]] == [0, 1, 2, 3]
            assert all(METRIC_KEYS | {"client", "records"} <= set(c) for c in out[tm]["clients"])
            assert 0 <= out[tm]["auc"] <= 1
        si = out["server"]["source_inference"]
        assert si["chance"] == 0.25 and si["accuracy"] > 0.25      # clients' models fit their own records
        assert out["model_accuracy"] == 0.5                         # the utility fields are kept (old name read)
    lines = read_jsonl(tmp_path / "rounds.jsonl")
    assert [row["round"] for row in lines] == [1, 2]
    before = (tmp_path / "rounds.jsonl").read_bytes(), round_path(tmp_path, 2).read_bytes()
    assert core.observe(*rounds[1]) is None                         # already written: a no-op
    restarted = new_core(prepared, tmp_path)                        # what a restarted actor sees
    assert restarted.done() == {1, 2} and restarted.observe(*rounds[0]) is None
    assert ((tmp_path / "rounds.jsonl").read_bytes(), round_path(tmp_path, 2).read_bytes()) == before


def test_server_sees_more_than_a_participant_on_overfit_clients(tmp_path):
    prepared, rounds = simulate(tiny_scenario(hidden=(128,), clients=16, rounds=1, local_epochs=30,
                                              batch_size=16))
    out = new_core(prepared, tmp_path).observe(*rounds[0])
    assert out["server"]["auc"] > 0.7 and out["server"]["auc"] > out["participant"]["auc"] + 0.1


def test_failed_and_non_finite_clients_are_left_out(federation, tmp_path):
    prepared, rounds = federation
    core = new_core(prepared, tmp_path)
    r, previous, clients, new = rounds[0]
    clients = dict(clients)
    del clients[3]                                                  # client 3 failed this round
    clients[1] = [np.full_like(w, np.nan) for w in clients[1]]      # client 1 returned NaN weights
    clients[2] = [w.copy() for w in clients[2]]
    clients[2][0][0, 0] = np.inf
    bad_global = [np.full_like(w, np.nan) for w in new]
    out = core.observe(r, previous, clients, bad_global, {"round": r, "failed": ["3"], "non_finite_clients": []})
    assert out["non_finite_clients"] == [1, 2] and out["failed"] == ["3"]
    server = out["server"]
    assert server["clients_audited"] == [0] and [c["client"] for c in server["clients"]] == [0]
    assert 0 <= server["auc"] <= 1 and server["source_inference"]["chance"] == 1.0
    assert server["summary"]["n_members"] == int(np.sum(prepared.ledger.owner == 0))   # only client 0's members
    assert out["participant"]["skipped"] == "the global model is not finite" and out["participant"]["auc"] is None
    with np.load(round_path(tmp_path, 1)) as z:       # record-level arrays: only client 0's model scored
        mine = z["server__scored_by"] == 0
        assert set(np.unique(z["server__scored_by"])) == {-1, 0}
        assert np.isfinite(z["server__score__loss"][mine]).all() and np.isnan(z["server__score__loss"][~mine]).all()
        assert np.isnan(z["server__features"][~mine]).all() and z["server__pop_features"].shape[0] == 1
    summary = aggregate_run(tmp_path)                               # aggregation copes with a half-audited round
    assert summary["threat_models"]["server"]["n_members"] == int(np.sum(prepared.ledger.owner == 0))


def test_rounds_may_arrive_out_of_order_and_merge_with_utility_lines(federation, tmp_path):
    prepared, rounds = federation
    core = new_core(prepared, tmp_path)
    merge_round(tmp_path, 2, {"accuracy": 0.9, "clients": [0, 1, 2, 3]})     # the sink's utility line first
    core.observe(*rounds[1], record={"round": 2, "accuracy": 0.9})
    core.observe(*rounds[0], record={"round": 1, "accuracy": 0.8})
    lines = read_jsonl(tmp_path / "rounds.jsonl")
    assert [row["round"] for row in lines] == [1, 2]
    assert lines[1]["model_accuracy"] == 0.9 and lines[1]["clients"] == [0, 1, 2, 3] and "server" in lines[1]


# --- across rounds ---------------------------------------------------------------------------


def test_aggregate_run_writes_the_run_dir_files_and_rebuilds_them(federation, tmp_path):
    prepared, rounds = federation
    core = new_core(prepared, tmp_path)
    for rnd in rounds:
        core.observe(*rnd)
    summary = core.finish()
    ledger = prepared.ledger
    members, population = int(np.sum(ledger.owner >= 0)), int(np.sum(ledger.owner == -1))
    rows = read_csv(tmp_path / "records.csv")
    assert rows[0] == RECORDS_HEADER and len(rows) == 1 + members + population
    body = rows[1:]
    assert [int(r[0]) for r in body] == sorted(np.flatnonzero(ledger.owner >= -1).tolist())
    for r in body:
        rec, client, member = int(r[0]), int(r[1]), int(r[2])
        assert client == ledger.owner[rec] and member == int(client >= 0) and int(r[3]) == prepared.dataset.y[rec]
        assert 0 <= float(r[4]) <= 1 and 0 <= float(r[5]) <= 1 and float(r[6]) == float(r[4])  # risk: server view
    clients = read_csv(tmp_path / "clients.csv")
    assert clients[0] == CLIENTS_HEADER and [int(r[0]) for r in clients[1:]] == [0, 1, 2, 3]
    for r in clients[1:]:
        assert int(r[1]) == int(np.sum(ledger.owner == int(r[0]))) and 0 <= float(r[2]) <= 1
        assert float(r[4]) <= float(r[5]) <= 1 and int(r[6]) in (1, 2)
    mp, nmp = np.load(tmp_path / "member_probs.npy"), np.load(tmp_path / "nonmember_probs.npy")
    assert mp.shape == (members,) and nmp.shape == (population,)
    risk = np.array([float(r[6]) for r in body])
    np.testing.assert_allclose(np.sort(mp), np.sort(risk[[r[2] == "1" for r in body]]), rtol=1e-6)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk["threat_models"]) == {"server", "participant"}
    for tm in ("server", "participant"):
        entry = on_disk["threat_models"][tm]
        assert entry["attack"] == "stacked-whitebox" and entry["rounds"] == [1, 2]
        assert set(entry["aggregations"]) == {"stacked", "max", "mean", "last"}
        assert on_disk["slices"][tm][0]["slice"] == "entire dataset"
    assert on_disk["source_inference"]["chance"] == 0.25 and on_disk["source_inference"]["accuracy"] > 0.25
    assert len(on_disk["classes"]) == 10 and on_disk["risk"]["threat_model"] == "server"
    assert summary["threat_models"]["server"]["auc"] == on_disk["threat_models"]["server"]["auc"]
    with np.load(tmp_path / "audit" / "aggregated.npz") as z:
        assert z["server__per_round"].shape == (members + population, 2)
        np.testing.assert_allclose(z["risk"], risk)
        assert np.all(z["server__max"] >= z["server__mean"])
    si = read_csv(tmp_path / "audit" / "source_inference.csv")
    assert si[0] == ["record", "client", "attributed", "correct", "lowest_loss", "lowest_loss_correct"]
    assert len(si) == 1 + members
    acc = on_disk["source_inference"]
    assert acc["accuracy"] == pytest.approx(np.mean([int(r[3]) for r in si[1:]]))
    assert acc["lowest_loss"]["accuracy"] == pytest.approx(np.mean([int(r[5]) for r in si[1:]]))
    # rebuilt from run_dir/audit and the ledger alone, the files come out the same
    saved = {name: (tmp_path / name).read_bytes() for name in ("records.csv", "clients.csv", "member_probs.npy")}
    for name in saved:
        (tmp_path / name).unlink()
    aggregate_run(tmp_path)
    assert all((tmp_path / name).read_bytes() == data for name, data in saved.items())


def test_each_view_names_its_stack_after_the_features_it_stacks(federation, tmp_path):
    """FedMIA (server only) outranks the blackbox attack, whose features both views stack: the stack is the
    blackbox attack's in both, whichever attack heads each view."""
    prepared, rounds = federation
    scenario = prepared.scenario.with_overrides({"audit.attacks": ["fedmia", "blackbox", "loss"]})
    core = new_core(dataclasses.replace(prepared, scenario=scenario), tmp_path)
    for rnd in rounds:
        core.observe(*rnd)
    summary = core.finish()
    server, participant = summary["threat_models"]["server"], summary["threat_models"]["participant"]
    assert server["headline"] == "fedmia" and participant["headline"] == "blackbox"
    assert server["attack"] == participant["attack"] == summary["attack"] == "stacked-blackbox"
    assert server["low_fpr_attack"] in ("stacked-blackbox", "fedmia", "blackbox", "loss")


def test_participant_only_audit_with_score_attacks(federation, tmp_path):
    prepared, rounds = federation
    scenario = prepared.scenario.with_overrides({"audit.threat_models": ["participant"],
                                                 "audit.attacks": ["loss", "entropy", "population", "lira"]})
    core = new_core(dataclasses.replace(prepared, scenario=scenario), tmp_path)
    out = core.observe(*rounds[0])
    assert "server" not in out and out["participant"]["attack"] == "population"
    assert set(out["participant"]["attacks"]) == {"loss", "entropy", "population"}
    assert set(out["skipped_attacks"]) == {"lira"}
    core.observe(*rounds[1])
    summary = core.finish()
    assert summary["attack"] == "stacked-scores" and summary["source_inference"] is None
    assert set(summary["threat_models"]) == {"participant"} and summary["risk"]["threat_model"] == "participant"
    body = read_csv(tmp_path / "records.csv")[1:]
    assert all(r[4] == "" and r[5] == r[6] != "" for r in body)


def test_reference_attacks_run_per_round_with_models_trained_once(tmp_path):
    """Without Ray: 2 reference models trained in process at the first round, reused after, cached."""
    prepared, rounds = simulate(tiny_scenario(hidden=(128,), clients=16, rounds=2, local_epochs=30, batch_size=16))
    attacks = ["loss", "lira-offline", "rmia-offline", "lira-online"]
    scenario = prepared.scenario.with_overrides({"audit.attacks": attacks, "audit.reference_models": 2})
    prepared = dataclasses.replace(prepared, scenario=scenario)
    core = new_core(prepared, tmp_path / "run")
    out = core.observe(*rounds[0])
    assert "skipped_attacks" not in out
    info = out["reference_models"]
    assert info["models"] == 2 and info["online"] and info["from_cache"] == 0 and info["epochs"] == 30
    # every audited record is IN for exactly one model and OUT for the other
    assert (core.references.in_mask.sum(axis=0) == 1).all()
    for tm in ("server", "participant"):
        for a in attacks:
            assert out[tm]["attacks"][a] is not None, (tm, a)
    server = out["server"]["attacks"]
    # overfit clients: the reference attacks recognise members (right sign); with 2 models, RMIA offline is
    # about as strong as the loss threshold and LiRA weaker (one OUT model per record), as in the papers
    assert server["rmia-offline"]["auc"] > 0.7 and server["rmia-offline"]["auc"] > server["loss"]["auc"] - 0.03
    assert server["lira-offline"]["auc"] > 0.55 and server["lira-online"]["auc"] > 0.55
    core.observe(*rounds[1])
    assert core.references.info["from_cache"] == 0          # trained once, not per round
    summary = core.finish()
    assert set(summary["threat_models"]) == {"server", "participant"}
    # a new auditor (a restart, another run in the same folder) loads them from the cache
    again = new_core(prepared, tmp_path / "run2").observe(*rounds[0])
    assert again["reference_models"]["from_cache"] == 2
    assert again["server"]["attacks"]["lira-offline"]["auc"] == server["lira-offline"]["auc"]
    # the actor warms its core while the clients train round 1: the reference models are then ready beforehand
    warmed = new_core(prepared, tmp_path / "run3")
    warmed.warm()
    assert warmed.references is not None and warmed.references.info["from_cache"] == 2
    ready = warmed.observe(*rounds[0])
    assert ready["server"]["attacks"]["lira-offline"]["auc"] == server["lira-offline"]["auc"]


def test_threshold_attacks_score_every_model_that_replied():
    from fedaudit.attacks.threshold import modified_entropy_scores

    rng = np.random.default_rng(5)
    logits = rng.normal(size=(30, 3, 4))
    logits[:, 1] = np.nan                                    # client 1 did not reply
    labels = rng.integers(0, 4, 30)
    out = threshold_scores("modified-entropy", logits, labels)
    assert np.isnan(out[:, 1]).all()
    np.testing.assert_allclose(out[:, 2], modified_entropy_scores(logits[:, 2], labels))


def test_sigmoid_is_stable():
    assert sigmoid(np.array([-1000.0, 0.0, 1000.0])).tolist() == [0.0, 0.5, 1.0]


# --- full runs on Ray ------------------------------------------------------------------------


def small_run_scenario(**overrides):
    return load_scenario(SCENARIOS / "quickstart.toml", {
        "federation.clients": 4, "federation.rounds": 3, "federation.local_epochs": 1, "audit.enabled": True,
        "audit.folds": 3, "audit.inferences": [], **overrides})


def check_rounds(run_dir, rounds):
    lines = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [row["round"] for row in lines] == list(range(1, rounds + 1))   # every round, exactly once
    for row in lines:
        assert "audit_error" not in row
        for tm in ("server", "participant"):
            assert METRIC_KEYS | {"attack", "clients"} <= set(row[tm]), (row["round"], tm, row[tm])
            assert all(METRIC_KEYS | {"client", "records"} <= set(c) for c in row[tm]["clients"])
    return lines


@pytest.mark.ray
def test_audited_run_survives_the_auditors_death(tmp_path):
    from fedaudit import faults
    from fedaudit.run import run_scenario

    with faults.injected(faults.FaultPlan(kill_auditor_after_round=2)):
        run_dir = run_scenario(small_run_scenario(), out=tmp_path / "run", progress=False, report=False)
    check_rounds(run_dir, 3)
    starts = read_jsonl(run_dir / "audit" / "starts.jsonl")
    assert len(starts) >= 2 and starts[0]["pid"] != starts[-1]["pid"]      # Ray restarted the actor
    assert 1 in starts[1]["rounds_done"]                 # ... which found round 1 written and did not redo it
    assert len(read_jsonl(run_dir / "audit" / "timing.jsonl")) == 3
    assert read_csv(run_dir / "records.csv")[0] == RECORDS_HEADER
    assert read_csv(run_dir / "clients.csv")[0] == CLIENTS_HEADER and len(read_csv(run_dir / "clients.csv")) == 5
    owner = np.load(run_dir / "ledger.npz")["owner"]
    assert np.load(run_dir / "member_probs.npy").shape == (int(np.sum(owner >= 0)),)
    assert np.load(run_dir / "nonmember_probs.npy").shape == (int(np.sum(owner == -1)),)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["threat_models"]) == {"server", "participant"} and summary["source_inference"]["chance"] == 0.25


@pytest.mark.ray
def test_audited_run_with_a_failing_and_a_nan_client(tmp_path):
    from fedaudit import faults
    from fedaudit.auditor import auditor_sink
    from fedaudit.federation.driver import prepare, run_federation, write_inputs

    prepared = prepare(small_run_scenario())
    run_dir = tmp_path / "run"
    write_inputs(run_dir, prepared)
    with faults.injected(faults.FaultPlan(fail_clients={3: 2}, nan_clients={1: 3})):
        run_federation(prepared, run_dir, progress=False, sink_factory=auditor_sink)
    lines = check_rounds(run_dir, 3)
    assert lines[1]["failed"] == ["3"] and lines[1]["server"]["clients_audited"] == [0, 1, 2]
    assert lines[2]["non_finite_clients"] == [1] and lines[2]["server"]["clients_audited"] == [0, 2, 3]
    assert lines[0]["non_finite_clients"] == [] and lines[0]["server"]["clients_audited"] == [0, 1, 2, 3]
    assert json.loads((run_dir / "summary.json").read_text())["threat_models"]["server"]["auc"] is not None
