import numpy as np
import pytest

from fedaudit.data import load_dataset
from fedaudit.errors import ModelError
from fedaudit.models import MODELS, Trainer, build_model


@pytest.mark.parametrize("name, shape", [("mlp", (64,)), ("purchase-fcn", (600,)), ("cnn", (8, 8, 1)),
                                         ("alexnet-small", (32, 32, 3))])
def test_every_model_builds_and_outputs_logits(name, shape):
    model = build_model(name, shape, 7, seed=1)
    out = model(np.zeros((2, *shape), np.float32))
    assert out.shape == (2, 7)
    again = build_model(name, shape, 7, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), again.get_weights()))
    assert name in MODELS


def test_bad_model_requests():
    with pytest.raises(ModelError, match="unknown model 'resnet'"):
        build_model("resnet", (64,), 10)
    with pytest.raises(ModelError, match="model.depth"):
        build_model("mlp", (64,), 10, depth=3)
    with pytest.raises(ModelError, match="image inputs"):
        build_model("cnn", (64,), 10)
    with pytest.raises(ModelError, match="model.widths"):
        build_model("purchase-fcn", (20,), 10, widths=[64, 32, 16])


def test_purchase_fcn_takes_other_widths():
    model = build_model("purchase-fcn", (20,), 5, seed=0, widths=[16, 12, 8, 4])
    assert [w.shape for w in model.get_weights()[::2]] == [(20, 16), (16, 12), (12, 8), (8, 4), (4, 5)]


def test_trainer_learns_and_resets_optimizer_but_not_learning_rate():
    d = load_dataset("digits")
    model = build_model("mlp", d.input_shape, d.num_classes, seed=0)
    trainer = Trainer(model, "adam", 1e-3)
    before = trainer.evaluate(d.x[:500], d.y[:500])[1]
    first = trainer.fit(d.x[:500], d.y[:500], epochs=3, batch_size=32, rng=np.random.default_rng(0))
    after = trainer.evaluate(d.x[:500], d.y[:500])[1]
    assert after > before + 0.3 and first.steps == 3 * 16
    trainer.fit(d.x[:64], d.y[:64], epochs=1, batch_size=32, rng=np.random.default_rng(0))
    assert int(trainer.optimizer.iterations) == 2          # fresh state: only this call's two steps
    assert float(trainer.optimizer.learning_rate) == pytest.approx(1e-3)


def test_fedprox_term_keeps_weights_near_the_start():
    d = load_dataset("digits")
    start = build_model("mlp", d.input_shape, d.num_classes, seed=0).get_weights()

    def drift(mu):
        trainer = Trainer(build_model("mlp", d.input_shape, d.num_classes, seed=0), "sgd", 0.1)
        trainer.set_weights(start)
        trainer.fit(d.x[:300], d.y[:300], epochs=3, batch_size=32, rng=np.random.default_rng(0), proximal_mu=mu)
        return sum(float(np.sum((a - b) ** 2)) for a, b in zip(trainer.get_weights(), start))

    assert drift(2.0) < 0.5 * drift(0.0)
