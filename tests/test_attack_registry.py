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
