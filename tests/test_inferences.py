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
    with pytest.raises(ConfigError, match=r"audit.inferences: unknown inference 'colours'; allowed: labels"):
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


def test_histogram_and_tv():
    assert tv_distance(histogram([0, 0, 1, 1], 2), [0.5, 0.5]) == 0
    assert tv_distance([1, 0], [0, 1]) == 1
