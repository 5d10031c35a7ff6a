"""Tests for fedaudit.data: loaders, registry, partitioners and the Ledger."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedaudit.data import (
    DATASETS,
    POPULATION,
    TEST,
    Ledger,
    build_ledger,
    load_dataset,
    parse_partition,
    partition,
    read_privacy_meter_txt,
    validate_arrays,
    write_privacy_meter_txt,
)
from fedaudit.errors import DataError


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# registry and bundled / generated datasets


def test_digits_flat_and_image():
    flat = load_dataset("digits")
    assert flat.x.shape == (1797, 64) and flat.x.dtype == np.float32
    assert flat.y.dtype == np.int64 and flat.num_classes == 10 and len(flat) == 1797
    assert 0.0 <= flat.x.min() and flat.x.max() == 1.0
    image = load_dataset("digits", image=True)
    assert image.input_shape == (8, 8, 1)
    np.testing.assert_array_equal(image.x.reshape(len(image), -1), flat.x)


def test_synthetic_purchase_is_binary_and_deterministic():
    a = load_dataset("synthetic-purchase", seed=3, records=50, features=30, classes=4)
    b = load_dataset("synthetic-purchase", seed=3, records=50, features=30, classes=4)
    c = load_dataset("synthetic-purchase", seed=4, records=50, features=30, classes=4)
    assert a.x.shape == (50, 30) and a.x.dtype == np.float32 and a.num_classes == 4
    assert set(np.unique(a.x)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def test_synthetic_purchase_records_stay_near_their_centroid():
    data = load_dataset("synthetic-purchase", records=400, features=200, classes=2, flip=0.1)
    means = np.stack([data.x[data.y == c].mean(axis=0) for c in range(2)])
    own = np.abs(data.x - means[data.y]).sum(axis=1)
    other = np.abs(data.x - means[1 - data.y]).sum(axis=1)
    assert (own < other).mean() > 0.99


def test_dataset_subset():
    data = load_dataset("digits")
    part = data.subset([3, 1])
    assert len(part) == 2 and part.num_classes == 10
    np.testing.assert_array_equal(part.y, data.y[[3, 1]])


@pytest.mark.parametrize(
    "options, words",
    [
        ({"records": 0}, ["records", ">= 1"]),
        ({"flip": 1.5}, ["flip", "[0, 1]"]),
        ({"classes": "many"}, ["classes", "integer"]),
    ],
)
def test_synthetic_purchase_bad_options(options, words):
    with pytest.raises(DataError) as info:
        load_dataset("synthetic-purchase", **options)
    assert all(word in str(info.value) for word in words)


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    assert "mnist" in str(info.value)
    assert all(name in str(info.value) for name in DATASETS)


def test_unknown_option_names_option_and_allowed():
    with pytest.raises(DataError, match="'imag'.*allowed options: image"):
        load_dataset("digits", imag=True)


def test_missing_required_option():
    with pytest.raises(DataError, match="needs option 'path'"):
        load_dataset("npz")


# ---------------------------------------------------------------------------------------------
# validate_arrays


def test_validate_arrays_converts_and_infers_classes():
    x, y, k = validate_arrays([[1, 2], [3, 4]], np.array([0.0, 2.0]))
    assert x.dtype == np.float32 and y.dtype == np.int64 and k == 3


@pytest.mark.parametrize(
    "x, y, num_classes, pattern",
    [
        (np.zeros((3, 2)), [0, 1], None, "3 records but y has 2"),
        (np.zeros((0, 2)), [], None, "no records"),
        (np.zeros((2, 2)), [0, -1], None, "labels must be >= 0"),
        (np.zeros((2, 2)), [0, 5], 3, "labels must be < num_classes=3"),
        (np.zeros((2, 2)), [0, 0.5], None, "integers"),
        (np.zeros((2, 2)), [[0], [1]], None, "1-D"),
        (np.zeros(2), [0, 1], None, "shape"),
        (np.array([[np.nan, 1.0]]), [0], None, "NaN"),
        (np.array([["a", "b"]]), [0], None, "numeric"),
        (np.zeros((2, 2)), [0, 1], 0, "num_classes"),
    ],
)
def test_validate_arrays_rejects(x, y, num_classes, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        validate_arrays(x, y, num_classes, source="my-source")
    assert "my-source" in str(info.value) or "num_classes" in str(info.value)


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_round_trip(tmp_path):
    x, y = rng().random((6, 2, 3)), np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", feats=x, labels=y)
    data = load_dataset("npz", path=tmp_path / "d.npz", x_key="feats", y_key="labels", num_classes=5)
    assert data.input_shape == (2, 3) and data.num_classes == 5
    np.testing.assert_allclose(data.x, x.astype(np.float32))


def test_npz_missing_key_names_key_and_contents(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 2)), labels=[0, 1])
    with pytest.raises(DataError) as info:
        load_dataset("npz", path=str(tmp_path / "d.npz"))
    message = str(info.value)
    assert "d.npz" in message and "'y'" in message and "y_key" in message and "labels" in message


@pytest.mark.parametrize(
    "y, options, pattern",
    [
        ([0, 1], {}, "3 records but y has 2"),
        ([0, -1, 1], {}, ">= 0"),
        ([0, 1, 4], {"num_classes": 3}, "< num_classes=3"),
    ],
)
def test_npz_bad_contents_name_the_file(tmp_path, y, options, pattern):
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 4)), y=np.array(y))
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset("npz", path=tmp_path / "bad.npz", **options)
    assert "bad.npz" in str(info.value)


def test_npz_refuses_pickled_objects(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="pickle"):
        load_dataset("npz", path=tmp_path / "obj.npz")


def test_npz_missing_or_not_npz(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("npz", path=tmp_path / "nope.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match="not an .npz archive"):
        load_dataset("npz", path=tmp_path / "single.npy")


# ---------------------------------------------------------------------------------------------
# csv


def test_csv_header_auto_detected_label_by_name(tmp_path):
    (tmp_path / "d.csv").write_text("a,label,b\n1,0,2\n3,1,4\n5,2,6\n")
    data = load_dataset("csv", path=tmp_path / "d.csv", label_column="label")
    np.testing.assert_array_equal(data.x, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(data.y, [0, 1, 2])


def test_csv_without_header_and_other_delimiter(tmp_path):
    (tmp_path / "d.csv").write_text("1;0.5;1\n0;0.25;0\n")
    data = load_dataset("csv", path=tmp_path / "d.csv", delimiter=";", label_column=0)
    np.testing.assert_array_equal(data.y, [1, 0])
    np.testing.assert_allclose(data.x, [[0.5, 1], [0.25, 0]])


@pytest.mark.parametrize(
    "text, options, pattern",
    [
        ("a,b\n1,0\n", {"label_column": "c"}, "no column 'c'; columns: a, b"),
        ("1,0\n2,1\n", {"label_column": "b"}, "no header"),
        ("1,0\n2,1\n", {"label_column": 5}, "label_column' is 5.*2 columns"),
        ("1,0\n2,x\n", {}, "not all numbers"),
        ("1,0\n2,1,3\n", {}, "not all numbers"),
        ("", {}, "empty"),
        ("1,0\n", {"delimiter": ",,"}, "delimiter"),
    ],
)
def test_csv_errors_name_the_problem(tmp_path, text, options, pattern):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=pattern):
        load_dataset("csv", path=tmp_path / "bad.csv", **options)


# ---------------------------------------------------------------------------------------------
# ML Privacy Meter format


def test_privacy_meter_tabular_round_trip(tmp_path):
    x, y = rng().random((5, 7)).astype(np.float32), np.array([0, 3, 1, 2, 3])
    write_privacy_meter_txt(tmp_path / "t.txt", x, y)
    assert not (tmp_path / "t.txt.tmp").exists()
    x2, y2 = read_privacy_meter_txt(tmp_path / "t.txt")
    np.testing.assert_array_equal(x2.astype(np.float32), x)
    np.testing.assert_array_equal(y2, y)


def test_privacy_meter_image_round_trip(tmp_path):
    x = rng(1).random((3, 4, 5, 3)).astype(np.float32)
    y = np.array([2, 0, 1])
    path = tmp_path / "img.txt"
    write_privacy_meter_txt(path, x, y)
    first = path.read_text().splitlines()[0].split(";")
    assert len(first) == 4 and first[-1] == "2" and len(first[0].split(",")) == 20
    data = load_dataset("privacy-meter", path=path, input_shape=[4, 5, 3], num_classes=3)
    assert data.input_shape == (4, 5, 3)
    np.testing.assert_array_equal(data.x, x)


def test_privacy_meter_channels_are_stored_one_after_another(tmp_path):
    # 1x2 image, 3 channels: red = (1, 2), green = (3, 4), blue = (5, 6)
    (tmp_path / "one.txt").write_text("1,2;3,4;5,6;1\n")
    x, y = read_privacy_meter_txt(tmp_path / "one.txt", input_shape=(1, 2, 3))
    np.testing.assert_array_equal(x[0, 0], [[1, 3, 5], [2, 4, 6]])
    assert y.tolist() == [1]
    flat, _ = read_privacy_meter_txt(tmp_path / "one.txt")
    assert flat.shape == (1, 6)


def test_privacy_meter_npy_string_records(tmp_path):
    records = np.array([["1,0,1", "2"], ["0,0,1", "0"]])
    np.save(tmp_path / "members.npy", records)
    data = load_dataset("privacy-meter", path=tmp_path / "members.npy")
    np.testing.assert_array_equal(data.x, [[1, 0, 1], [0, 0, 1]])
    np.testing.assert_array_equal(data.y, [2, 0])


@pytest.mark.parametrize(
    "text, options, pattern",
    [
        ("1,2,3\n", {}, "record 1: expected 'features;label'"),
        ("1,2;0\n1,2,3;1\n", {}, "record 2: has 1 channel.*3 values"),
        ("1,a;0\n", {}, "record 1: not a number"),
        ("1,2;0.5\n", {}, "integers"),
        ("1,2;-1\n", {}, ">= 0"),
        ("1,2;0\n", {"input_shape": [3]}, "input_shape.*3 values"),
        ("\n\n", {}, "no records"),
    ],
)
def test_privacy_meter_errors(tmp_path, text, options, pattern):
    (tmp_path / "pm.txt").write_text(text)
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset("privacy-meter", path=tmp_path / "pm.txt", **options)
    assert "pm.txt" in str(info.value) or "input_shape" in str(info.value)


# ---------------------------------------------------------------------------------------------
# CIFAR pickles


def write_cifar_batch(path, labels, label_key=b"labels", seed=0, protocol=2, extra=None):
    """A tiny batch shaped like the real ones: uint8 rows of 3072 values (R plane, G, B)."""
    data = rng(seed).integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    batch = {b"batch_label": b"fake", label_key: list(labels), b"data": data, **(extra or {})}
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=protocol)
    return data


def test_cifar10_fake_batches(tmp_path):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    raw = [write_cifar_batch(tmp_path / name, [i % 10, (i + 1) % 10], seed=i, protocol=2 + i % 4)
           for i, name in enumerate(names)]
    data = load_dataset("cifar10", path=tmp_path)
    assert data.x.shape == (12, 32, 32, 3) and data.num_classes == 10
    assert data.x.dtype == np.float32 and data.x.max() <= 1.0
    np.testing.assert_array_equal(data.y[:4], [0, 1, 1, 2])
    first = raw[0][0]
    assert data.x[0, 0, 1, 0] == np.float32(first[1]) / 255  # red plane, row 0, column 1
    assert data.x[0, 0, 0, 2] == np.float32(first[2048]) / 255  # blue plane starts at 2048
    assert len(load_dataset("cifar10", path=tmp_path, limit=3)) == 3


def test_cifar100_fine_labels(tmp_path):
    write_cifar_batch(tmp_path / "train", [5, 99], b"fine_labels")
    write_cifar_batch(tmp_path / "test", [42], b"fine_labels", seed=1)
    data = load_dataset("cifar100", path=tmp_path)
    assert data.num_classes == 100 and data.y.tolist() == [5, 99, 42]


def test_cifar_missing_batches_named(tmp_path):
    write_cifar_batch(tmp_path / "train", [1], b"fine_labels")
    with pytest.raises(DataError, match="lacks test"):
        load_dataset("cifar100", path=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", path=tmp_path / "nowhere")


def test_cifar_refuses_foreign_pickle_content(tmp_path):
    write_cifar_batch(tmp_path / "train", [1], b"fine_labels", extra={b"evil": os.getcwd})
    write_cifar_batch(tmp_path / "test", [1], b"fine_labels")
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar100", path=tmp_path)


def test_cifar_wrong_keys(tmp_path):
    write_cifar_batch(tmp_path / "train", [1], b"labels")  # cifar10 key in a cifar100 batch
    write_cifar_batch(tmp_path / "test", [1], b"fine_labels")
    with pytest.raises(DataError, match="fine_labels"):
        load_dataset("cifar100", path=tmp_path)


# ---------------------------------------------------------------------------------------------
# partitioners


def assert_disjoint_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == n
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts if len(p) > 1)


def test_iid_even_split():
    parts = partition(np.zeros(103), 10, rng=rng())
    assert_disjoint_cover(parts, 103)
    assert {len(p) for p in parts} == {10, 11}


def test_dirichlet_skews_labels():
    labels = np.repeat(np.arange(10), 50)
    parts = partition(labels, 5, "dirichlet", 0.1, rng=rng(), min_size=5)
    assert_disjoint_cover(parts, 500)
    assert min(len(p) for p in parts) >= 5
    dominant = [np.bincount(labels[p]).max() / len(p) for p in parts]
    assert np.mean(dominant) > 0.3


def test_shards_give_few_labels_per_client():
    labels = np.repeat(np.arange(10), 20)
    parts = partition(labels, 10, "shards", 2, rng=rng())
    assert_disjoint_cover(parts, 200)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_partition_is_deterministic_from_rng():
    labels = rng().integers(0, 5, 100)
    for method in ("iid", "dirichlet", "shards"):
        a = partition(labels, 4, method, rng=rng(7))
        b = partition(labels, 4, method, rng=rng(7))
        assert all(np.array_equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize(
    "args, pattern",
    [
        ((np.zeros(5), 0), "num_clients.*>= 1"),
        ((np.zeros(5), 6), "more clients.*than records"),
        ((np.zeros(5), 2, "random"), "unknown partition method 'random'; allowed: dirichlet, iid, shards"),
        ((np.zeros(5), 2, "iid", 3.0), "'iid' takes no parameter"),
        ((np.zeros(5), 2, "dirichlet", -1.0), "alpha must be a number > 0"),
        ((np.zeros(5), 2, "shards", 1.5), "shards.*integer >= 1"),
        ((np.zeros(5), 3, "shards", 2), "6 shards, more than the 5 records"),
        ((np.zeros((2, 2)), 1), "1-D"),
    ],
)
def test_partition_errors(args, pattern):
    with pytest.raises(DataError, match=pattern):
        partition(*args)


def test_dirichlet_too_small_alpha_explains():
    labels = np.repeat(np.arange(2), 10)
    with pytest.raises(DataError, match="alpha is too small or there are too many clients"):
        partition(labels, 10, "dirichlet", 0.001, rng=rng(), min_size=2)


@pytest.mark.parametrize(
    "spec, expected",
    [("iid", ("iid", None)), ("dirichlet:0.1", ("dirichlet", 0.1)), (" shards:2 ", ("shards", 2.0))],
)
def test_parse_partition(spec, expected):
    assert parse_partition(spec) == expected


@pytest.mark.parametrize(
    "spec, pattern", [("dirichlet:x", "not a number"), ("zipf:1", "unknown method 'zipf'")]
)
def test_parse_partition_errors(spec, pattern):
    with pytest.raises(DataError, match=pattern):
        parse_partition(spec)


# ---------------------------------------------------------------------------------------------
# Ledger


def assert_ledger_invariants(ledger, n):
    clients = [ledger.client_indices(k) for k in range(ledger.num_clients)]
    members = np.concatenate(clients)
    assert len(members) == len(np.unique(members))  # no record in two clients
    np.testing.assert_array_equal(np.sort(members), ledger.members())
    population, test = ledger.population_indices(), ledger.test_indices()
    assert not np.intersect1d(population, members).size and not np.intersect1d(test, members).size
    assert not np.intersect1d(population, test).size
    assert len(members) + len(population) + len(test) == n  # every record has one owner
    assert all(len(c) >= 1 for c in clients)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(100, 300),
    num_clients=st.integers(1, 8),
    population_fraction=st.floats(0, 0.4),
    test_fraction=st.floats(0, 0.4),
    method=st.sampled_from(["iid", "dirichlet:1.0", "dirichlet:5", "shards:1", "shards:2"]),
    seed=st.integers(0, 2**32),
)
def test_ledger_properties(
    tmp_path_factory, n, num_clients, population_fraction, test_fraction, method, seed
):
    labels = np.random.default_rng(seed).integers(0, 5, n)
    options = dict(partition=method, population_fraction=population_fraction, test_fraction=test_fraction,
                   seed=seed)
    try:
        ledger = build_ledger(labels, num_clients, **options)
    except DataError as exc:  # a Dirichlet draw may starve a client; nothing else may fail
        assert method.startswith("dirichlet") and "alpha" in str(exc)
        assume(False)
    assert_ledger_invariants(ledger, n)
    assert abs(len(ledger.test_indices()) - test_fraction * n) <= 1
    assert abs(len(ledger.population_indices()) - population_fraction * n) <= 1
    again = build_ledger(labels, num_clients, **options)
    np.testing.assert_array_equal(again.owner, ledger.owner)
    path = tmp_path_factory.mktemp("ledger") / "ledger.npz"
    ledger.save(path)
    loaded = Ledger.load(path)
    np.testing.assert_array_equal(loaded.owner, ledger.owner)
    assert (loaded.num_clients, loaded.seed) == (num_clients, seed)


def test_ledger_summary_and_seed_dependence():
    labels = np.arange(100) % 4
    ledger = build_ledger(labels, 4, population_fraction=0.3, test_fraction=0.2, seed=1)
    summary = ledger.summary()
    assert summary["test"] == 20 and summary["population"] == 30 and summary["members"] == 50
    assert sum(summary["clients"]) == 50 and len(summary["clients"]) == 4
    other = build_ledger(labels, 4, population_fraction=0.3, test_fraction=0.2, seed=2)
    assert not np.array_equal(ledger.owner, other.owner)


def test_ledger_save_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "ledger.npz"
    build_ledger(np.zeros(20), 2, seed=0).save(path)
    build_ledger(np.zeros(20), 3, seed=1).save(path)
    assert Ledger.load(path).num_clients == 3
    assert os.listdir(tmp_path) == ["ledger.npz"]


@pytest.mark.parametrize(
    "arrays, pattern",
    [
        ({"owner": np.zeros(3, np.int64), "num_clients": 1}, "lacks seed"),
        ({"owner": np.array([0, 5]), "num_clients": 2, "seed": 0}, "values must be client ids 0..1"),
        ({"owner": np.array([0, -3]), "num_clients": 2, "seed": 0}, "values must be"),
        ({"owner": np.array([0.5]), "num_clients": 2, "seed": 0}, "integer array"),
        ({"owner": np.array([0]), "num_clients": 0, "seed": 0}, "num_clients"),
        ({"owner": np.array([0]), "num_clients": [1, 2], "seed": 0}, "scalars"),
    ],
)
def test_ledger_load_rejects_malformed(tmp_path, arrays, pattern):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=pattern) as info:
        Ledger.load(path)
    assert "bad.npz" in str(info.value)


def test_ledger_load_missing_or_garbage(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Ledger.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="junk.npz"):
        Ledger.load(tmp_path / "junk.npz")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"population_fraction": 1.0}, "population_fraction.*\\[0, 1\\)"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"population_fraction": 0.6, "test_fraction": 0.4}, "must be below 1"),
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": 9}, "more clients.*than client records"),
        ({"partition": "zipf"}, "unknown method 'zipf'"),
        ({"partition": "dirichlet:0.5", "param": 0.5}, "already has a parameter"),
    ],
)
def test_build_ledger_errors(kwargs, pattern):
    kwargs = {"num_clients": 2, "population_fraction": 0.25, "test_fraction": 0.25, **kwargs}
    num_clients = kwargs.pop("num_clients")
    with pytest.raises(DataError, match=pattern):
        build_ledger(np.zeros(16), num_clients, **kwargs)


def test_client_indices_rejects_unknown_client():
    ledger = build_ledger(np.zeros(10), 2)
    with pytest.raises(DataError, match="0..1"):
        ledger.client_indices(2)
    assert POPULATION == -1 and TEST == -2


def test_attack_data_is_lazy():
    import fedaudit.data as data

    assert "attack_data" in dir(data)
    with pytest.raises(AttributeError):
        data.no_such_name  # noqa: B018
