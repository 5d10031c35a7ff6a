"""The attack registry (one place for every attack), FedMIA and quantile-regression MIA.

A toy attack registered here becomes usable in config validation, in the single-model audit and in the
per-round auditor without editing any list. FedMIA and QMIA are checked where the answer is known: chance on a
model that learned nothing of its members, found on a planted leak, QMIA's quantiles calibrated."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from fedaudit.attacks import AttackInputs, register_score_attack, run_score_attack
from fedaudit.attacks.base import attack_names, attack_spec, headline, register_trained_attack, unregister
from fedaudit.config import scenario_from_dict
from fedaudit.errors import AttackError, ConfigError
from fedaudit.metrics import auc

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def toy():
    """A toy score attack (the target's true-class logit) and a toy trained attack (phi column only)."""

    @register_score_attack("toy-logit", rank=1)
    def toy_logit(inputs: AttackInputs) -> np.ndarray:
        """Toy: the true-class logit."""
        return np.take_along_axis(inputs.target_logits, inputs.labels[:, None], axis=1)[:, 0]

    @register_trained_attack("toy-phi", rank=2)
    def toy_phi(feature_names):
        """Toy: logistic regression on phi alone."""
        return np.array([list(feature_names).index("phi")])

    yield "toy-logit", "toy-phi"
    unregister("toy-logit")
    unregister("toy-phi")


def test_the_registry_is_the_only_list(toy):
    names = attack_names()
    assert {"whitebox", "blackbox", "loss", "lira", "rmia-online", "fedmia", "qmia", "toy-logit", "toy-phi"} <= set(names)
    assert names[:2] == ["toy-logit", "toy-phi"]                     # by headline rank
    assert headline(["loss", "whitebox", "population"]) == "whitebox"
    assert headline(["loss", "lira", "reference"]) == "lira" and headline(["loss", "population"]) == "population"
    assert attack_spec("fedmia").views == ("server",) and attack_spec("fedmia").needs_null
    assert attack_spec("qmia").fitted and not attack_spec("qmia").uses_reference_models
    assert attack_spec("whitebox").trained and attack_spec("lira").name == "lira-offline"
    s = scenario_from_dict({"audit": {"attacks": ["toy-logit", "toy-phi", "loss"]}})
    assert s.audit.attacks == ["toy-logit", "toy-phi", "loss"]
    with pytest.raises(ConfigError, match="unknown attack 'toy-nope'.*toy-logit"):
        scenario_from_dict({"audit": {"attacks": ["toy-nope"]}})
    with pytest.raises(ValueError, match="registered twice"):
        register_score_attack("toy-logit")(lambda inputs: inputs.labels)
    with pytest.raises(AttackError, match="unknown attack 'toy-nope'"):
        attack_spec("toy-nope")
    from fedaudit.model_audit import ModelAuditSettings

    assert ModelAuditSettings(attacks=["toy-logit", "toy-phi"]).check().attacks == ["toy-logit", "toy-phi"]
    with pytest.raises(ConfigError, match="--reference-models"):
        ModelAuditSettings(attacks=["fedmia"]).check()                 # single model: its null models are references


def test_config_imports_no_tensorflow():
    import subprocess

    code = ("import sys; from fedaudit.config import ATTACKS, scenario_from_dict; "
            "scenario_from_dict({'audit': {'attacks': ['fedmia', 'qmia', 'whitebox']}}); "
            "assert 'qmia' in ATTACKS; print('tensorflow' in sys.modules, 'sklearn.ensemble' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]


def test_the_auditor_and_aggregation_import_no_cycle():
    """auditor.core imports auditor.aggregate (finish); aggregate imports nothing of core, at any level."""
    import ast

    import fedaudit.auditor.aggregate as aggregate

    tree = ast.parse(Path(aggregate.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "fedaudit.auditor.core" not in imported and "fedaudit.auditor" not in imported


# --- QMIA ---------------------------------------------------------------------------------------------------


def difficulty_data(seed=0, n=1200, m=1500, d=8, shift=1.0, classes=4):
    """Records whose non-member score depends on their features (per-record difficulty); members add ``shift``."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1.0, d)

    def draw(size, member):
        x = rng.normal(size=(size, d))
        y = rng.integers(0, classes, size)
        s = 1.5 * np.tanh(x @ w) + 0.5 * y + rng.normal(0, 0.4, size) + shift * member
        z = np.zeros((size, classes))
        z[np.arange(size), y] = s                 # hinge = s: the true logit over zeros
        return x, y, z

    member = rng.random(n) < 0.5
    x, y, z = draw(n, 0)
    xm, ym, zm = draw(n, 1)
    x[member], y[member], z[member] = xm[member], ym[member], zm[member]
    px, py, pz = draw(m, 0)
    return AttackInputs(z, y, population_logits=pz, population_labels=py, features=x, population_features=px), member


def test_qmia_finds_a_planted_leak_beyond_the_loss_threshold_and_is_chance_without_one():
    inputs, member = difficulty_data(shift=1.0)
    for regressor in ("ridge", "linear", "gradient-boosting"):
        q = auc(*(lambda s: (s[member], s[~member]))(run_score_attack("qmia", inputs, regressor=regressor)))
        loss = auc(*(lambda s: (s[member], s[~member]))(run_score_attack("loss", inputs)))
        assert q > 0.8 and q > loss + 0.1, (regressor, q, loss)       # the difficulty the loss cannot see
    none, member = difficulty_data(seed=1, shift=0.0)
    s = run_score_attack("qmia", none)
    assert abs(auc(s[member], s[~member]) - 0.5) < 0.05
    with pytest.raises(AttackError, match="qmia.*features"):
        run_score_attack("qmia", dataclasses.replace(inputs, features=None, population_features=None))


def test_qmia_quantiles_cover_held_out_population_records_at_the_nominal_level():
    from fedaudit.attacks.qmia import QuantileModel, design, hinge

    inputs, _ = difficulty_data(seed=2, m=4000)
    x = design(inputs.population_features, inputs.population_labels, 4)
    s = hinge(inputs.population_logits, inputs.population_labels)
    fit, held = slice(0, 2000), slice(2000, 4000)
    for alpha in (0.1, 0.3):
        for regressor in ("ridge", "linear", "gradient-boosting"):
            q = QuantileModel(alpha, regressor).fit(x[fit], s[fit]).predict(x[held])
            coverage = float(np.mean(s[held] <= q))
            assert abs(coverage - (1 - alpha)) < 0.04, (alpha, regressor, coverage)


# --- FedMIA ---------------------------------------------------------------------------------------------------


def test_fedmia_null_test_is_chance_without_signal_and_finds_a_planted_one():
    from fedaudit.auditor.null import phi_logits

    rng = np.random.default_rng(3)
    n, M = 2000, 8
    difficulty = rng.normal(0, 3, n)                       # shared by every model: the null must remove it
    member = rng.random(n) < 0.5
    null = difficulty + rng.normal(0, 1, (M, n))
    null[:, :50] = np.nan                                  # some records have fewer null models
    null[:3, :50] = difficulty[:50] + rng.normal(0, 1, (3, 50))
    for shift, lo, hi in ((0.0, 0.45, 0.55), (1.5, 0.8, 1.0)):
        phi = difficulty + rng.normal(0, 1, n) + shift * member
        logits, labels = phi_logits(phi)
        s = run_score_attack("fedmia", AttackInputs(logits, labels, null_phi=null))
        assert lo < auc(s[member], s[~member]) < hi, shift
        loss = run_score_attack("loss", AttackInputs(logits, labels))
        if shift:
            assert auc(s[member], s[~member]) > auc(loss[member], loss[~member]) + 0.15
    with pytest.raises(AttackError, match="fedmia.*null"):
        run_score_attack("fedmia", AttackInputs(logits, labels))


def test_null_clients_are_distinct_others_and_linear():
    from fedaudit.auditor.null import null_clients, rows_by_client

    source = np.r_[np.repeat([2, 5, 7, 9, 11], 300), -1]
    null = null_clients(source, [2, 5, 7, 9, 11], 8, seed=0, round_=1)
    assert null.shape == (source.size, 4)                     # at most replying - 1 others
    assert (null[-1] == -1).all() and all(sorted(r) == sorted({2, 5, 7, 9, 11} - {s}) for r, s in
                                          zip(null[:-1].tolist(), source[:-1]))
    null = null_clients(np.repeat(np.arange(50), 20), range(50), 8, seed=0, round_=1)
    assert null.shape == (1000, 8) and (null != np.repeat(np.arange(50), 20)[:, None]).all()
    assert all(len(set(r)) == 8 for r in null.tolist())
    per = rows_by_client(null, range(50))
    assert sum(v[0].size for v in per.values()) == 8000     # 8 forward passes per record, whatever the clients
    assert np.bincount(null.ravel(), minlength=50).min() > 100
    again = null_clients(np.repeat(np.arange(50), 20), range(50), 8, seed=0, round_=1)
    assert np.array_equal(null, again) and not np.array_equal(null, null_clients(
        np.repeat(np.arange(50), 20), range(50), 8, seed=0, round_=2))


# --- per round, in the auditor -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overfit_round():
    from test_auditor import simulate, tiny_scenario

    return simulate(tiny_scenario(hidden=(128,), clients=16, rounds=1, local_epochs=30, batch_size=16))


def test_per_round_fedmia_qmia_and_a_registered_toy_attack(overfit_round, toy, tmp_path):
    """The planted leak (clients that memorised their records) is found; a round whose client models learned
    nothing of their members (theta_prev plus noise) is chance; the toy attacks run with no list edited."""
    from test_auditor import new_core

    prepared, rounds = overfit_round
    attacks = ["fedmia", "qmia", "loss", "toy-logit", "toy-phi"]
    prepared = dataclasses.replace(prepared, scenario=prepared.scenario.with_overrides({"audit.attacks": attacks}))
    out = new_core(prepared, tmp_path / "leak").observe(*rounds[0])
    server, participant = out["server"]["attacks"], out["participant"]["attacks"]
    assert set(server) == set(attacks) and set(participant) == set(attacks) - {"fedmia"}
    assert out["server"]["attack"] == out["participant"]["attack"] == "toy-logit"     # rank 1
    assert server["fedmia"]["auc"] > 0.7 and server["fedmia"]["auc"] > server["loss"]["auc"] + 0.02
    assert server["qmia"]["auc"] > 0.65 and server["toy-phi"]["auc"] > 0.6
    with np.load(tmp_path / "leak" / "audit" / "round_0001.npz") as z:
        assert z["server__score__fedmia"].shape == z["server__score__loss"].shape
        assert z["server__pop_score__fedmia"].shape[0] == 16
    r, previous, clients, new = rounds[0]
    rng = np.random.default_rng(0)
    noise = {k: [w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in previous] for k in clients}
    average = [np.mean(np.stack(layer), axis=0) for layer in zip(*noise.values())]
    out = new_core(prepared, tmp_path / "none").observe(1, previous, noise, average)
    for tm, names in (("server", ("fedmia", "qmia", "toy-phi")), ("participant", ("qmia", "toy-phi"))):
        for name in names:
            assert abs(out[tm]["attacks"][name]["auc"] - 0.5) < 0.07, (tm, name, out[tm]["attacks"][name]["auc"])


def test_audit_model_runs_registered_attacks(overfit_round, toy, tmp_path):
    from fedaudit.attacks import audit_model
    from fedaudit.models import build_model

    prepared, rounds = overfit_round
    d, ledger = prepared.dataset, prepared.ledger
    model = build_model("mlp", d.input_shape, d.num_classes, seed=0, hidden=[128])
    model.set_weights(rounds[0][2][0])                      # client 0's memorising model
    mine, population = np.flatnonzero(ledger.owner == 0), np.flatnonzero(ledger.owner == -1)
    non, pop = population[:200], population[200:]
    results = audit_model(model, d.x[mine], d.y[mine], d.x[non], d.y[non], x_population=d.x[pop],
                          y_population=d.y[pop], attacks=["toy-logit", "qmia", "fedmia", "loss"], reference_models=2,
                          model_name="mlp", model_options={"hidden": [128]}, epochs=10, cache_dir=tmp_path,
                          parallel=False)
    assert list(results) == ["toy-logit", "qmia", "fedmia", "loss"]
    # one client's memorising model, 62 members: FedMIA on 2 offline reference models as its null finds it;
    # QMIA is weaker on digits (little per-record difficulty to learn from 250 population records; its leak
    # detection is checked on planted data above), but on the right side of chance
    assert results["fedmia"].auc > 0.6 and results["loss"].auc > 0.6 and results["toy-logit"].auc > 0.6
    assert results["qmia"].auc > 0.5
