"""The whitebox attack stacked with a second model on compact features (stack="forest" or "boosting")."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from fedaudit.attacks.whitebox import WhiteBoxAttack, fit_attack, whitebox_features  # noqa: E402
from fedaudit.attacks.whitebox.stacking import (  # noqa: E402
    _mean_probability_log_odds, compact_features, forest_features, stack)
from fedaudit.data import load_dataset  # noqa: E402
from fedaudit.data.handler import attack_data  # noqa: E402
from fedaudit.errors import AttackError  # noqa: E402
from fedaudit.metrics import auc  # noqa: E402
from fedaudit.models import build_model, train_model  # noqa: E402

FAST = dict(learning_rate=1e-3, epochs=5, min_steps=150)


@pytest.fixture(scope="module")
def target():
    ds = load_dataset("synthetic-purchase", seed=0, records=640, features=60, classes=8, flip=0.4)
    model = build_model("purchase-fcn", ds.input_shape, ds.num_classes, seed=0)
    train_model(model, ds.x[:160], ds.y[:160], epochs=40, batch_size=32, seed=0)
    return model, ds


def test_compact_features_one_row_per_record_label_last(target):
    model, ds = target
    f = whitebox_features(model, ds.x[:50], ds.y[:50], layers=[5], gradients=[3, 4, 5])
    x = compact_features(f)
    assert x.shape[0] == 50 and np.isfinite(x).all()
    np.testing.assert_array_equal(x[:, -1], ds.y[:50])
    np.testing.assert_allclose(x[:, 0], f.loss)
    np.testing.assert_array_equal(compact_features(f.subset(np.arange(10))), x[:10])


def test_forest_features_are_the_softmax_the_one_hot_label_and_the_compact_statistics(target):
    model, ds = target
    f = whitebox_features(model, ds.x[:30], ds.y[:30], layers=[5], gradients=[4, 5])
    x, c = forest_features(f), f.logits.shape[1]
    np.testing.assert_allclose(x[:, :c].sum(axis=1), 1.0)
    np.testing.assert_array_equal(x[:, :c].argmax(axis=1), f.logits.argmax(axis=1))
    np.testing.assert_array_equal(x[:, c:2 * c].argmax(axis=1), ds.y[:30])
    np.testing.assert_array_equal(x[:, 2 * c:], compact_features(f)[:, :-1])


@pytest.mark.parametrize("kind,part", [("forest", "forest"), ("boosting", "boosted")])
def test_stacked_meminf_beats_chance_and_scores_out_of_sample(target, tmp_path, kind, part):
    model, ds = target
    handler = attack_data.from_arrays(ds.x[:160], ds.y[:160], ds.x[160:], ds.y[160:], batch_size=32)
    attack = WhiteBoxAttack(model, model, handler, handler, layers_to_exploit=[5], gradients_to_exploit=[3, 4, 5],
                            log_dir=tmp_path, stack=kind, **FAST)
    trained = attack.train_attack()
    assert set(trained["stack_validation"]) == {"network", part, "stacked"}
    assert attack.stacked.kind == kind
    result = attack.test_attack()
    assert result.auc > 0.6, result.auc
    held = handler.test_split()
    feats = attack.features(model, held.x, held.y, "attack_datahandler")
    np.testing.assert_allclose(attack.predict(feats)[held.membership == 1], result.member_probs, rtol=1e-6)
    network = attack.fitted.predict(feats)
    assert not np.allclose(attack.predict(feats), network)          # the second model moved the scores
    with pytest.raises(AttackError, match="stack"):
        WhiteBoxAttack(model, model, handler, handler, layers_to_exploit=[5], stack="bagging")


def test_the_forest_score_is_the_mean_of_the_probabilities_and_the_default_is_the_network_alone(target, tmp_path):
    model, ds = target
    handler = attack_data.from_arrays(ds.x[:160], ds.y[:160], ds.x[160:], ds.y[160:], batch_size=32)
    attack = WhiteBoxAttack(model, model, handler, handler, layers_to_exploit=[5], log_dir=tmp_path, stack="forest",
                            **FAST)
    attack.train_attack()
    held = handler.test_split()
    feats = attack.features(model, held.x, held.y, "attack_datahandler")
    forest = attack.stacked.second.predict_proba(forest_features(feats))[:, 1]
    mean = (attack.fitted.predict(feats) + forest) / 2
    np.testing.assert_allclose(attack.predict(feats), mean, rtol=1e-9, atol=1e-12)
    # the log-odds are exact where the forest is unanimous: records stay ordered by the network's log-odds
    big = np.array([20.0, 30.0, 40.0])
    np.testing.assert_allclose(_mean_probability_log_odds(0.5, big, np.ones(3)), big + np.log(2))
    np.testing.assert_allclose(_mean_probability_log_odds(0.5, -big, np.zeros(3)), -big - np.log(2))
    bare = WhiteBoxAttack(model, model, handler, handler, layers_to_exploit=[5], log_dir=tmp_path, **FAST)
    bare.train_attack()
    assert bare.stack is None and bare.stacked is None
    np.testing.assert_allclose(bare.predict(feats), attack.fitted.predict(feats))


@pytest.mark.parametrize("kind", ["forest", "boosting"])
def test_stacked_attack_is_chance_when_membership_is_not_in_the_model(target, kind):
    """Labels that say nothing about the model (both halves non-members): held-out AUC ~ 0.5."""
    model, ds = target
    rng = np.random.default_rng(3)
    pool = 160 + rng.permutation(len(ds.y) - 160)
    known, held = pool[:240], pool[240:480]
    fake = rng.permutation(np.r_[np.ones(120), np.zeros(120)]).astype(int)
    fk = whitebox_features(model, ds.x[known], ds.y[known], layers=[5], gradients=[4, 5])
    fitted = fit_attack(fk, fake, epochs=5, batch_size=32, min_steps=100, seed=0)
    stacked = stack(fitted, fk, fake, seed=0, kind=kind)
    fake_held = rng.permutation(np.r_[np.ones(120), np.zeros(120)]).astype(bool)
    s = stacked.predict(whitebox_features(model, ds.x[held], ds.y[held], layers=[5], gradients=[4, 5]))
    assert abs(auc(s[fake_held], s[~fake_held]) - 0.5) < 0.1
    with pytest.raises(AttackError, match="stack: unknown stacking 'bagging'"):
        stack(fitted, fk, fake, kind="bagging")
