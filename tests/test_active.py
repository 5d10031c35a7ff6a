"""Adversaries that deviate from the protocol: the manipulations themselves, without Ray."""

import numpy as np
import pytest

from fedaudit.federation.active import Ascent, cosine, inert_weights, recover_target, update
from fedaudit.metrics import auc_interval


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def trainer_for(name, seed=0, **options):
    from fedaudit.models import Trainer, build_model

    return Trainer(build_model(name, (64,), 10, seed=seed, **options), "adam", 0.01)


@pytest.mark.parametrize("name,options", [("mlp", {"hidden": [32, 16]}), ("purchase-fcn", {})])
def test_an_inert_model_trains_only_its_output_bias(digits, name, options):
    x, y = digits
    if name == "purchase-fcn":
        from fedaudit.models import Trainer, build_model

        trainer = Trainer(build_model(name, (64,), 10, seed=0), "adam", 0.01)
    else:
        trainer = trainer_for(name, **options)
    sent = inert_weights(trainer.get_weights())
    trainer.set_weights(sent)
    trainer.fit(x[:200], y[:200], epochs=3, batch_size=32, rng=np.random.default_rng(0))
    back = trainer.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(back[:-1], sent[:-1]))
    assert not np.allclose(back[-1], sent[-1])          # the output bias moved towards the client's label mix


def test_the_target_model_is_recovered_from_the_weighted_mean(digits):
    x, y = digits
    trainer = trainer_for("mlp", hidden=[32])
    theta = trainer.get_weights()
    trainer.fit(x[:300], y[:300], epochs=2, batch_size=32, rng=np.random.default_rng(1))
    target = trainer.get_weights()
    sent = inert_weights(theta)
    others = {}
    for k, rows in ((1, slice(300, 500)), (2, slice(500, 900))):
        trainer.set_weights(sent)
        trainer.fit(x[rows], y[rows], epochs=2, batch_size=32, rng=np.random.default_rng(k))
        others[k] = trainer.get_weights()
    weights = {0: 300, 1: 200, 2: 400}
    models = {0: target, **others}
    total = sum(weights.values())
    aggregate = [sum(weights[k] * models[k][i] for k in models) / total for i in range(len(target))]
    got = recover_target(aggregate, weights, 0, sent)
    for a, b in zip(got[:-1], target[:-1]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert cosine(update(got, theta), update(target, theta)) > 0.99
    # without the inconsistency (everyone sent theta), the same algebra recovers nothing like the target
    trainer.set_weights(theta)
    trainer.fit(x[300:500], y[300:500], epochs=2, batch_size=32, rng=np.random.default_rng(3))
    honest = [(300 * t + 200 * o) / 500 for t, o in zip(target, trainer.get_weights())]
    assert cosine(update(recover_target(honest, {0: 300, 1: 200}, 0, theta), theta), update(target, theta)) < 0.99


def test_gradient_ascent_raises_the_targets_loss(digits):
    x, y = digits
    trainer = trainer_for("mlp", hidden=[32])
    trainer.fit(x[:500], y[:500], epochs=5, batch_size=32, rng=np.random.default_rng(0))
    ascent = Ascent("mlp", {"hidden": [32]}, (64,), 10)
    before = trainer.get_weights()
    after, losses = ascent(before, x[:50], y[:50], steps=5, lr=0.5)
    assert losses[-1] > losses[0] * 1.5 and np.all(np.diff(losses) > 0)
    assert not np.allclose(after[0], before[0])
    _, none = ascent(before, x[:50], y[:50], steps=0, lr=0.5)
    assert none == [pytest.approx(losses[0], rel=1e-5)]


# --- the active server, audited in this process (the federation's moves applied by hand, as ServerMoves does) -------

def simulate_active(scenario, run_dir):
    """FedAvg in this process with the active server's gradient ascent before each round's model goes out; every
    round audited by the twin's AuditCore. Returns the aggregated summary."""
    from fedaudit.auditor import AuditCore, aggregate_run
    from fedaudit.federation.active import ascent_for, plan_for
    from fedaudit.federation.driver import prepare, write_inputs
    from fedaudit.models import Trainer, build_model

    p = prepare(scenario)
    f, d = scenario.federation, p.dataset
    write_inputs(run_dir, p)
    core = AuditCore.from_dataset(run_dir, scenario, d.x, d.y, p.ledger.owner, p.ledger.num_clients)
    trainer = Trainer(build_model(scenario.model.name, d.input_shape, d.num_classes, seed=f.seed,
                                  **scenario.model.options), f.optimizer, f.learning_rate)
    plan = plan_for(scenario, d, p.ledger)
    ascent = ascent_for(scenario.model.name, scenario.model.options, d.input_shape, d.num_classes)
    weights = p.initial_weights
    for r in range(1, f.rounds + 1):
        sent, _ = ascent(weights, d.x[plan.targets], d.y[plan.targets], plan.ascent_steps, plan.ascent_lr)
        clients = {}
        for k in range(f.clients):
            idx = p.ledger.client_indices(k)
            trainer.set_weights(sent)
            trainer.fit(d.x[idx], d.y[idx], epochs=f.local_epochs, batch_size=f.batch_size,
                        rng=np.random.default_rng([f.seed, k, r]))
            clients[k] = trainer.get_weights()
        new = [np.mean(np.stack(layer), axis=0) for layer in zip(*[clients[k] for k in sorted(clients)])]
        core.observe(r, sent, clients, new, {"round": r})
        weights = new
    return aggregate_run(run_dir)


def active_scenario(**federation):
    from fedaudit.config import scenario_from_dict

    fed = {"clients": 4, "rounds": 2, "local_epochs": 10, "batch_size": 16, "seed": 3, "learning_rate": 0.003,
           **federation}
    return scenario_from_dict({"name": "active", "data": {"dataset": "digits", "population_fraction": 0.3},
                               "model": {"name": "mlp", "hidden": [64]}, "federation": fed,
                               "audit": {"enabled": True, "folds": 3, "threat_models": ["active-server"],
                                         "attacks": ["blackbox", "loss"], "active": {"targets": 300}}})


def test_an_active_server_finds_members_that_trained_and_reports_chance_when_nothing_was_learned(tmp_path):
    """With a learning rate of ~0 the clients return the model they were sent: the ascent shows which records the
    server targeted (their loss is high under every model) but not which of them are members, so the attack is at
    chance. With learning, the owners pull their members' losses back down and the attack finds them."""
    learned = simulate_active(active_scenario(), tmp_path / "learned")["threat_models"]["active-server"]
    nothing = simulate_active(active_scenario(learning_rate=1e-9), tmp_path / "nothing")["threat_models"]["active-server"]
    assert learned["n_members"] == nothing["n_members"] == 150 and learned["n_nonmembers"] == 150   # the targets
    assert auc_interval(learned["auc"], 150, 150)[0] > 0.55          # found, beyond its interval
    lo, hi = auc_interval(nothing["auc"], nothing["n_members"], nothing["n_nonmembers"])
    assert lo < 0.5 < hi and abs(nothing["auc"] - 0.5) < 0.1
