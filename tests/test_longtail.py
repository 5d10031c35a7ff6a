"""synthetic-purchase with a long tail (Zipf subgroups, label noise), and the papers' order of attacks on it."""

import numpy as np
import pytest

from fedaudit.config import scenario_from_dict
from fedaudit.data import load_dataset
from fedaudit.errors import DataError

LONG_TAIL = dict(features=100, classes=10, subgroups=20, label_noise=0.05)


def test_defaults_are_the_plain_generator_and_options_are_seeded():
    plain = load_dataset("synthetic-purchase", seed=3, records=200, features=30, classes=4)
    same = load_dataset("synthetic-purchase", seed=3, records=200, features=30, classes=4, subgroups=1, label_noise=0)
    np.testing.assert_array_equal(plain.x, same.x)
    np.testing.assert_array_equal(plain.y, same.y)
    a, b = (load_dataset("synthetic-purchase", seed=3, records=200, features=30, classes=4, subgroups=5,
                         label_noise=0.1) for _ in range(2))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    c = load_dataset("synthetic-purchase", seed=4, records=200, features=30, classes=4, subgroups=5, label_noise=0.1)
    assert not np.array_equal(a.x, c.x)
    assert not np.array_equal(a.x, plain.x)


def test_subgroups_have_zipf_sizes_and_their_own_prototypes():
    d = load_dataset("synthetic-purchase", seed=0, records=6000, features=200, classes=3, flip=0.0, subgroups=8)
    for k in range(3):
        rows, counts = np.unique(d.x[d.y == k], axis=0, return_counts=True)
        assert 6 <= len(rows) <= 8                     # flip 0: each record is its subgroup's prototype
        share = np.sort(counts)[::-1] / counts.sum()
        expected = 1 / np.arange(1, 9) / (1 / np.arange(1, 9)).sum()
        assert share[0] == pytest.approx(expected[0], abs=0.05) and share[0] > 4 * share[-1]
        # prototypes share the class centroid's bits about half the time more than chance would
        agree = (rows[:, None, :] == rows[None, :, :]).mean(axis=2)[np.triu_indices(len(rows), 1)]
        assert 0.6 < agree.mean() < 0.95


def test_label_noise_flips_exactly_that_fraction_to_other_classes():
    clean = load_dataset("synthetic-purchase", seed=1, records=1000, features=50, classes=5, subgroups=3)
    noisy = load_dataset("synthetic-purchase", seed=1, records=1000, features=50, classes=5, subgroups=3,
                         label_noise=0.1)
    np.testing.assert_array_equal(clean.x, noisy.x)
    assert (clean.y != noisy.y).sum() == 100 and noisy.y.max() < 5


@pytest.mark.parametrize("options, words", [
    ({"subgroups": 0}, ["subgroups", ">= 1"]),
    ({"subgroups": 2.5}, ["subgroups", "integer"]),
    ({"zipf": -1}, ["zipf", ">= 0"]),
    ({"zipf": "steep"}, ["zipf", "number"]),
    ({"label_noise": 1.0}, ["label_noise", "[0, 1)"]),
    ({"label_noise": 0.1, "classes": 1}, ["label_noise", "2 classes"]),
])
def test_bad_long_tail_options_are_one_line_errors(options, words):
    with pytest.raises(DataError) as info:
        load_dataset("synthetic-purchase", **options)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_scenario_data_section_takes_the_options():
    s = scenario_from_dict({"data": {"dataset": "synthetic-purchase", "records": 300, **LONG_TAIL}})
    d = load_dataset(s.data.dataset, seed=0, **s.data.options)
    assert len(d) == 300 and d.num_classes == 10


def test_on_long_tail_data_rmia_and_lira_beat_the_loss_threshold_at_low_fpr():
    """The papers' order at 1% FPR, with 4 reference models, outside the intervals (1,000 members, 1,000
    non-members; reference models train on 1,000 of 2,000 population records, none audited)."""
    pytest.importorskip("keras")
    from fedaudit.attacks.audit import prepare_audit, score_all
    from fedaudit.metrics import summarize
    from fedaudit.models import build_model, train_model

    n, epochs, options = 1000, 30, {"hidden": [256]}
    d = load_dataset("synthetic-purchase", seed=0, records=4 * n, **LONG_TAIL)
    order = np.random.default_rng(1).permutation(len(d))
    members, nonmembers, population = order[:n], order[n:2 * n], order[2 * n:]
    model = build_model("mlp", d.input_shape, d.num_classes, seed=0, **options)
    train_model(model, d.x[members], d.y[members], epochs=epochs, seed=0)
    attacks = ("loss", "lira-offline", "rmia-offline")
    data = prepare_audit(model, d.x[members], d.y[members], d.x[nonmembers], d.y[nonmembers],
                         x_population=d.x[population], y_population=d.y[population], attacks=attacks,
                         reference_models=4, model_name="mlp", model_options=options, epochs=epochs, seed=7,
                         parallel=False)
    m = data.is_member
    result = {k: summarize(s[m], s[~m]) for k, s in score_all(data, attacks).items()}
    loss = result["loss"]
    for name in ("lira-offline", "rmia-offline"):
        r = result[name]
        assert r.tpr_at_1pct_ci[0] > loss.tpr_at_1pct_ci[1], (name, r.tpr_at_1pct_ci, loss.tpr_at_1pct_ci)
        assert r.auc > loss.auc, name
