"""The whitebox attack (function-level core and ML Privacy Meter's API), threshold scores, the data handler."""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from fedaudit.attacks.threshold import (  # noqa: E402
    THRESHOLD_ATTACKS, confidence_scores, entropy_scores, loss_scores, modified_entropy_scores,
)
from fedaudit.attacks.nasr import (  # noqa: E402
    GradientRowConv, WhiteBoxAttack, blackbox_features, build_attack_network, fit_attack, whitebox_features,
)
from fedaudit.data import load_dataset, write_privacy_meter_txt  # noqa: E402
from fedaudit.data.handler import attack_data, record_hashes  # noqa: E402
from fedaudit.errors import AttackError, DataError  # noqa: E402
from fedaudit.metrics import auc  # noqa: E402
from fedaudit.models import build_model, train_model  # noqa: E402

N_MEMBERS = 160
FAST = dict(learning_rate=1e-3, epochs=5, min_steps=150)


@pytest.fixture(scope="module")
def target():
    """purchase-fcn strongly overfit on 160 noisy records of 60 features and 8 classes."""
    ds = load_dataset("synthetic-purchase", seed=0, records=640, features=60, classes=8, flip=0.4)
    model = build_model("purchase-fcn", ds.input_shape, ds.num_classes, seed=0)
    train_model(model, ds.x[:N_MEMBERS], ds.y[:N_MEMBERS], epochs=40, batch_size=32, seed=0)
    return model, ds


@pytest.fixture(scope="module")
def files(target, tmp_path_factory):
    """The records in ML Privacy Meter's formats: members as its .npy string array, population as text."""
    _, ds = target
    folder = tmp_path_factory.mktemp("pm")
    write_privacy_meter_txt(folder / "population.txt", ds.x, ds.y)  # includes the members, as the tutorial's did
    lines = (folder / "population.txt").read_text().splitlines()[:N_MEMBERS]
    np.save(folder / "members.txt.npy", np.array([line.split(";") for line in lines]))
    return folder / "population.txt", folder / "members.txt.npy"


@pytest.fixture(scope="module")
def handler(files):
    population, members = files
    return attack_data(dataset_path=population, member_dataset_path=members, batch_size=32,
                       attack_percentage=50, input_shape=(60,))


@pytest.fixture(scope="module")
def tutorial(target, handler, tmp_path_factory):
    """ML Privacy Meter's tutorial shape: layers [5], gradients [3, 4, 5], run end to end."""
    model, _ = target
    log_dir = tmp_path_factory.mktemp("logs")
    attack = WhiteBoxAttack(target_train_model=model, target_attack_model=model, train_datahandler=handler,
                            attack_datahandler=handler, optimizer="adam", layers_to_exploit=[5],
                            gradients_to_exploit=[3, 4, 5], model_name="tutorial", log_dir=log_dir, **FAST)
    trained = attack.train_attack()
    return attack, trained, attack.test_attack(), log_dir


# ---------------------------------------------------------------------------------------------
# threshold attacks


def test_threshold_scores_rank_confident_true_class_higher():
    logits = np.array([[9.0, 0, 0], [2, 1, 0], [0, 0, 0], [0, 3, 0], [40, 0, 0]])
    labels = np.array([0, 0, 0, 0, 0])
    for name, fn in THRESHOLD_ATTACKS.items():
        s = fn(logits, labels)
        assert s.shape == (5,) and not np.isnan(s).any(), name
        assert s[4] >= s[0] > s[1] > s[2], name
    assert loss_scores(logits, labels)[4] > loss_scores(logits, labels)[0]  # distinct even where loss rounds to 0
    z, y = logits[:4], labels[:4]  # the direct formulas (imprecise where p rounds to 1)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(loss_scores(z, y), np.log(p[:, 0]), rtol=1e-9)
    np.testing.assert_allclose(confidence_scores(z, y), p[:, 0], rtol=1e-9)
    np.testing.assert_allclose(entropy_scores(z, y), np.sum(p * np.log(p), 1), rtol=1e-9)
    mentr = -(1 - p[:, 0]) * np.log(p[:, 0]) - np.sum(p[:, 1:] * np.log(1 - p[:, 1:]), 1)
    np.testing.assert_allclose(modified_entropy_scores(z, y), -mentr, rtol=1e-7)
    # a wrong class at probability ~1: modified entropy stays finite
    assert np.isfinite(modified_entropy_scores(np.array([[0.0, 60, 0]]), np.array([0])))[0]


def test_logit_statistics_equal_the_separate_scores():
    """The per-round features' one-pass statistics are the threshold attacks' values, bit for bit."""
    from fedaudit.attacks.scores import logit_confidence
    from fedaudit.attacks.threshold import logit_statistics

    rng = np.random.default_rng(3)
    for scale in (0.01, 3.0, 80.0):        # near-uniform, ordinary, saturated (p_y rounds to 0 or 1)
        z, y = rng.normal(size=(400, 7)) * scale, rng.integers(0, 7, size=400)
        phi, loss, neg_entropy, neg_mentropy = logit_statistics(z, y)
        assert np.array_equal(phi, logit_confidence(z, y)) and np.array_equal(loss, -loss_scores(z, y))
        assert np.array_equal(neg_entropy, entropy_scores(z, y))
        assert np.array_equal(neg_mentropy, modified_entropy_scores(z, y))
    with pytest.raises(AttackError, match="labels"):
        logit_statistics(np.zeros((2, 3)), np.array([0, 3]))


# ---------------------------------------------------------------------------------------------
# ML Privacy Meter's API, tutorial shape


def test_tutorial_outputs_exist_with_the_right_shapes(tutorial, handler):
    attack, trained, result, log_dir = tutorial
    test = handler.test_split()
    n_m, n_nm = len(test.members_y), len(test.nonmembers_y)
    assert n_m == N_MEMBERS - handler.attack_size == 80 and n_nm == 80
    for name in ("privacy_risk.png", "roc.png", "roc_log.png", "gradient_norm.png"):
        assert (log_dir / "plots" / name).stat().st_size > 1000, name
    for k in np.unique(np.r_[test.members_y, test.nonmembers_y]):
        assert (log_dir / "plots" / f"privacy_risk_label{k}.png").is_file()
    arrays = {name: np.load(log_dir / f"{name}.npy", allow_pickle=False)
              for name in ("member_probs", "nonmember_probs", "m_features", "m_labels", "nm_features", "nm_labels")}
    assert arrays["member_probs"].shape == (n_m, 1) and arrays["nonmember_probs"].shape == (n_nm, 1)
    assert np.all((arrays["member_probs"] >= 0) & (arrays["member_probs"] <= 1))
    assert arrays["m_features"].shape == (n_m, 60) and arrays["nm_features"].shape == (n_nm, 60)
    np.testing.assert_array_equal(arrays["m_labels"], test.members_y)
    np.testing.assert_array_equal(arrays["nm_labels"], test.nonmembers_y)
    from fedaudit.report.tensorboard import read_scalars

    (events,) = (log_dir / "tensorboard" / "tutorial").glob("events.out.tfevents.*")
    scalars = read_scalars(events)
    assert {"attack/train_loss", "attack/val_loss", "attack/val_auc", "attack/val_accuracy"} <= set(scalars)
    assert len(scalars["attack/val_auc"]) == len(attack.fitted.history)
    saved = json.loads((log_dir / "result.json").read_text())
    assert saved["auc"] == pytest.approx(result.auc) and saved["n_members"] == n_m
    assert set(saved["baselines"]) == set(THRESHOLD_ATTACKS)
    # metrics are those of the saved probabilities
    assert result.auc == pytest.approx(auc(arrays["member_probs"].ravel(), arrays["nonmember_probs"].ravel()))
    assert np.isnan(result.tpr_at_1pct) and saved["tpr_at_1pct"] is None  # 80 non-members cannot measure 1% FPR
    assert "tpr_at_1pct" in result.summary.unmeasurable and 0.5 <= result.accuracy <= 1
    assert trained["known_records"] == 160 and trained["best_epoch"] >= 1


def test_tutorial_scores_only_records_the_attack_did_not_train_on(tutorial, handler):
    attack, _, result, log_dir = tutorial
    known = handler.train_split()
    seen = set(record_hashes(known.x, known.y).tolist())
    m = np.load(log_dir / "m_features.npy")
    nm = np.load(log_dir / "nm_features.npy")
    scored = record_hashes(np.r_[m, nm], np.r_[np.load(log_dir / "m_labels.npy"), np.load(log_dir / "nm_labels.npy")])
    assert not seen & set(scored.tolist())
    assert len(result.member_probs) + len(result.nonmember_probs) == len(scored)


def test_attack_on_a_strongly_overfit_target_beats_chance(tutorial):
    _, _, result, _ = tutorial
    assert result.auc > 0.6, result.auc


def test_temperature_scaling_recovers_the_overconfidence_of_known_log_odds():
    """Records whose membership is drawn from sigmoid(z / 3): the temperature fitted to their logits z is about 3;
    without five records of each class it is 1."""
    from fedaudit.attacks.nasr.training import calibrate_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 6.0, 4000)
    member = rng.random(4000) < 1 / (1 + np.exp(-z / 3.0))
    assert 2.7 < calibrate_temperature(z, member) < 3.3
    assert 0.9 < calibrate_temperature(z / 3.0, member) < 1.1           # already calibrated
    assert calibrate_temperature(z[:20], np.r_[np.ones(16, bool), np.zeros(4, bool)]) == 1.0


def test_function_core_whitebox_and_blackbox(target):
    """What the federated auditor uses: features once, fit on known records, predict on others."""
    model, ds = target
    rng = np.random.default_rng(1)
    members, population = rng.permutation(N_MEMBERS), N_MEMBERS + rng.permutation(len(ds.y) - N_MEMBERS)[:N_MEMBERS]
    known = np.r_[members[:80], population[:80]]
    held = np.r_[members[80:], population[80:]]
    membership = np.r_[np.ones(80), np.zeros(80)]
    for make in (lambda x, y: whitebox_features(model, x, y, layers=[5], gradients=[4, 5]),
                 lambda x, y: blackbox_features(model, x, y)):
        feats = make(ds.x[known], ds.y[known])
        fitted = fit_attack(feats, membership, epochs=5, batch_size=32, learning_rate=1e-3, min_steps=150, seed=0)
        assert len(fitted.history) == 38  # 128 training records, 4 steps an epoch, at least 150 steps
        assert set(fitted.train_index).isdisjoint(fitted.val_index)
        assert len(fitted.train_index) + len(fitted.val_index) == 160 and len(fitted.val_index) == 32
        assert all("val_auc" in h for h in fitted.history)
        held_feats = make(ds.x[held], ds.y[held])
        probs = fitted.predict(held_feats)
        assert probs.shape == (160,)
        assert auc(probs[:80], probs[80:]) > 0.6
        # calibrated on the validation split: the network's logits over the temperature, the same ranks
        raw = fitted.network(fitted.preprocessor.transform(held_feats), training=False).numpy()[:, 0]
        assert 0.05 <= fitted.temperature <= 50
        np.testing.assert_allclose(fitted.log_odds(held_feats), raw / fitted.temperature, rtol=1e-5, atol=1e-6)
    again = [fit_attack(feats, membership, epochs=3, batch_size=32, min_steps=0, seed=7).predict(feats)
             for _ in range(2)]
    np.testing.assert_array_equal(again[0], again[1])  # seeded: the same network, split and batches


def test_convolutional_components():
    """Conv layer outputs and conv kernel gradients get convolutional components (digits images, cnn)."""
    ds = load_dataset("digits", image=True)
    model = build_model("cnn", ds.input_shape, ds.num_classes, seed=0)
    x, y = ds.x[:48], ds.y[:48]
    feats = whitebox_features(model, x, y, layers=["conv_2", 7], gradients=[1, "conv_2", 4])
    kinds = {c.name: (c.kind, c.shape) for c in feats.components}
    assert kinds["output/conv_2"] == ("output_conv", (4, 4, 32))
    assert kinds["grad/conv_1"] == ("grad_conv", (3, 3, 1, 16))
    assert kinds["grad/conv_2"] == ("grad_conv", (3, 3, 16, 32))
    assert kinds["grad/logits"] == ("grad_factors", (64, 10))
    fitted = fit_attack(feats, np.r_[np.ones(24), np.zeros(24)], epochs=2, batch_size=16, min_steps=0)
    probs = fitted.predict(feats)
    assert probs.shape == (48,) and np.all((probs >= 0) & (probs <= 1))
    with pytest.raises(AttackError, match="other layers or gradients"):
        fitted.predict(whitebox_features(model, x, y, layers=[7], gradients=[4]))


def test_factored_gradient_convolution_equals_the_convolution_over_the_full_gradient(target):
    model, ds = target
    feats = whitebox_features(model, ds.x[:8], ds.y[:8], gradients=[5], exploit_loss=False, exploit_label=False)
    (comp,) = feats.components
    assert comp.kind == "grad_factors" and comp.shape == (128, 8)
    net = build_attack_network(feats.components, seed=0)
    assert net.get_layer("grad_logits_rowconv").pool == "mean"
    for size, params in (("auto", 35_000), ("paper", 27_000_000)):  # paper: 12,800 inputs into 2,024 units
        count = build_attack_network(feats.components, seed=0, size=size).count_params()
        assert params / 2 < count < params * 2, (size, count)
    row_conv = GradientRowConv(8, 16, seed=0)
    a, d = feats.arrays["grad/logits/a"], feats.arrays["grad/logits/d"]
    full = np.einsum("bi,bo->bio", a, d)
    np.testing.assert_allclose(row_conv(a, d).numpy(), row_conv(full).numpy(), rtol=1e-4, atol=1e-7)
    pooled = GradientRowConv(8, 16, seed=0, pool="mean")
    np.testing.assert_allclose(pooled(a, d).numpy(), row_conv(a, d).numpy().mean(axis=1), rtol=1e-5, atol=1e-9)
    kernel = row_conv.w.numpy()
    conv = keras.layers.Conv2D(kernel.shape[1], (1, 8), activation="relu")
    conv.build((None, 128, 8, 1))
    conv.set_weights([kernel[None, :, None, :], row_conv.b.numpy()])
    np.testing.assert_allclose(row_conv(a, d).numpy(), conv(full[..., None]).numpy()[:, :, 0, :], rtol=1e-4, atol=1e-7)


def test_train_on_one_model_evaluate_on_another(target, handler, tmp_path):
    model, ds = target
    other = build_model("purchase-fcn", ds.input_shape, ds.num_classes, seed=3)
    train_model(other, ds.x[:N_MEMBERS], ds.y[:N_MEMBERS], epochs=5, batch_size=32, seed=3)
    attack = WhiteBoxAttack(model, other, handler, handler, layers_to_exploit=[5], gradients_to_exploit=[5],
                            log_dir=tmp_path, **FAST)
    attack.train_attack()
    result = attack.test_attack()
    assert len(result.member_probs) == 80
    small = build_model("mlp", ds.input_shape, ds.num_classes)
    with pytest.raises(AttackError, match="same architecture"):
        WhiteBoxAttack(model, small, handler, handler, layers_to_exploit=[2])


def test_overlapping_handlers_never_score_training_records(target, files, handler, tmp_path):
    model, ds = target
    population, members = files
    shifted = attack_data(dataset_path=population, member_dataset_path=members, batch_size=32,
                          attack_percentage=25, input_shape=(60,), seed=5)
    attack = WhiteBoxAttack(model, model, handler, shifted, layers_to_exploit=[5], log_dir=tmp_path, **FAST)
    attack.train_attack()
    result = attack.test_attack()
    known = handler.train_split()
    seen = set(record_hashes(known.x, known.y).tolist())
    held = shifted.test_split()
    expected_m = sum(h not in seen for h in record_hashes(held.members_x, held.members_y))
    assert 0 < expected_m < len(held.members_y) and len(result.member_probs) == expected_m


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("kwargs, words", [
    (dict(layers_to_exploit=[6]), ["layers_to_exploit", "out of range", "1..5"]),
    (dict(gradients_to_exploit=[0]), ["gradients_to_exploit", "out of range", "1..5"]),
    (dict(layers_to_exploit=[5], optimizer="lbfgs"), ["optimizer", "adam"]),
    (dict(layers_to_exploit=[], exploit_loss=False, exploit_label=False), ["nothing to exploit"]),
])
def test_bad_configuration(target, handler, kwargs, words):
    model, _ = target
    with pytest.raises(AttackError) as info:
        WhiteBoxAttack(model, model, handler, handler, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_gradient_of_a_layer_without_kernel():
    model = build_model("cnn", (8, 8, 1), 10)
    dh = attack_data.from_arrays(np.zeros((4, 8, 8, 1)), np.arange(4), np.ones((4, 8, 8, 1)), np.arange(4))
    with pytest.raises(AttackError, match=r"'pool_1' \(MaxPooling2D\) has no kernel.*1 = conv_1"):
        WhiteBoxAttack(model, model, dh, dh, gradients_to_exploit=["pool_1"])


def test_labels_and_records_that_do_not_match_the_model(target, tmp_path):
    model, ds = target
    x, y = ds.x[:40], ds.y[:40]
    wrong_labels = attack_data.from_arrays(x[:20], y[:20] + 8, x[20:], y[20:])
    attack = WhiteBoxAttack(model, model, wrong_labels, wrong_labels, layers_to_exploit=[5], log_dir=tmp_path)
    with pytest.raises(AttackError, match=r"label \d+ does not match the model's 8 outputs; allowed: class ids 0\.\.7"):
        attack.train_attack()
    wide = attack_data.from_arrays(np.c_[x, x][:20], y[:20], np.c_[x, x][20:], y[20:])
    attack = WhiteBoxAttack(model, model, wide, wide, layers_to_exploit=[5], log_dir=tmp_path)
    with pytest.raises(AttackError, match=r"train_datahandler: records have shape \(120,\).*\(60,\)"):
        attack.train_attack()
    with pytest.raises(AttackError, match="train_attack"):
        attack.test_attack()


def test_a_2021_meminf_call_configures_the_attack_it_names(target, handler):
    """ML Privacy Meter's call, reached through ``import fedaudit as ml_privacy_meter``, keeps every keyword."""
    import fedaudit as ml_privacy_meter

    model, ds = target
    meminf = ml_privacy_meter.attack.meminf
    attack = meminf.initialize(target_train_model=model, target_attack_model=model, train_datahandler=handler,
                               attack_datahandler=handler, optimizer="adam", model_name="tutorial",
                               layers_to_exploit=[5], gradients_to_exploit=[4, 5], exploit_loss=False,
                               exploit_label=True, learning_rate=1e-4, epochs=3)
    assert type(attack) is meminf.meminf is WhiteBoxAttack
    assert (attack.layers_to_exploit, attack.gradients_to_exploit, attack.model_name) == ([5], [4, 5], "tutorial")
    assert (attack.exploit_loss, attack.exploit_label, attack.learning_rate, attack.epochs) == (False, True, 1e-4, 3)
    assert attack.batch_size == handler.batch_size == 32
    kinds = [c.kind for c in attack.features(model, ds.x[:8], ds.y[:8], "test").components]
    assert "loss" not in kinds and "label" in kinds and "output_dense" in kinds
    assert any(k.startswith("grad") for k in kinds)


# ---------------------------------------------------------------------------------------------
# the data handler


def test_handler_split_is_disjoint_balanced_and_seeded(handler, target):
    _, ds = target
    assert handler.training_size == N_MEMBERS and handler.attack_size == 80
    assert len(handler.population_y) == len(ds.y) - N_MEMBERS  # members dropped from the population
    train, test = handler.train_split(), handler.test_split()
    assert len(train.members_y) == len(train.nonmembers_y) == 80 == len(test.members_y) == len(test.nonmembers_y)
    hashes = [set(record_hashes(a, b).tolist()) for a, b in ((train.members_x, train.members_y),
              (train.nonmembers_x, train.nonmembers_y), (test.members_x, test.members_y),
              (test.nonmembers_x, test.nonmembers_y))]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not hashes[i] & hashes[j]
    np.testing.assert_array_equal(train.membership, np.r_[np.ones(80), np.zeros(80)])


def test_handler_normalization_and_bad_options(files, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    write_privacy_meter_txt(tmp_path / "pop.txt", images, labels)
    write_privacy_meter_txt(tmp_path / "mem.txt", images[:10], labels[:10])
    dh = attack_data(tmp_path / "pop.txt", tmp_path / "mem.txt", batch_size=4, attack_percentage=50,
                     input_shape=(4, 4, 3), normalization=True)
    dh.means, dh.stddevs = [0.5, 0.4, 0.3], [0.2, 0.2, 0.1]  # set by the caller, as the CIFAR tutorial did
    train = dh.train_split()
    raw = attack_data(tmp_path / "pop.txt", tmp_path / "mem.txt", batch_size=4, attack_percentage=50,
                      input_shape=(4, 4, 3)).train_split()
    np.testing.assert_allclose(train.members_x, (raw.members_x / 255 - [0.5, 0.4, 0.3]) / [0.2, 0.2, 0.1],
                               rtol=1e-5, atol=1e-6)
    population, members = files
    with pytest.raises(DataError, match="attack_percentage"):
        attack_data(population, members, batch_size=32, attack_percentage=0, input_shape=(60,))
    with pytest.raises(DataError, match="input_shape"):
        attack_data(population, members, batch_size=32, attack_percentage=50, input_shape=(61,))
