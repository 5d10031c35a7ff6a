"""Adversaries that deviate from the protocol: the manipulations themselves, without Ray."""

import numpy as np
import pytest

from fedaudit.federation.active import Ascent, cosine, inert_weights, recover_target, update


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
