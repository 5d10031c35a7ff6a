"""Datasets by name: the :class:`Dataset` record, the registry, and the built-in datasets.

A dataset builder is a function ``build(seed, **options) -> Dataset`` registered with
``@register_dataset(name)``; its keyword parameters are the dataset's options, and
:func:`load_dataset` rejects any other option with a message that lists the allowed ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedaudit.data import loaders
from fedaudit.data.loaders import check_fraction, check_int
from fedaudit.errors import DataError


@dataclass
class Dataset:
    """Records and labels of one dataset, as plain NumPy arrays.

    ``x`` is float32 of shape (n, *input_shape), images channels-last (n, H, W, C);
    ``y`` is int64 of shape (n,) with values in [0, num_classes).
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one record."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices) -> Dataset:
        """The records at ``indices`` (e.g. ``ledger.client_indices(k)``), same name and classes."""
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset(self.name, self.x[indices], self.y[indices], self.num_classes)


DATASETS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str):
    """Decorator: register ``build(seed, **options) -> Dataset`` under ``name``."""

    def decorator(builder: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        DATASETS[name] = builder
        return builder

    return decorator


def dataset_options(name: str) -> dict[str, object]:
    """The options of dataset ``name`` and their defaults (``inspect.Parameter.empty`` if required)."""
    parameters = inspect.signature(DATASETS[name]).parameters
    return {key: p.default for key, p in parameters.items() if key != "seed"}


def load_dataset(name: str, seed: int = 0, **options) -> Dataset:
    """Build the dataset registered as ``name`` with ``options``; ``seed`` drives any randomness."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    allowed = dataset_options(name)
    listing = ", ".join(allowed) or "none"
    for option in options:
        if option not in allowed:
            raise DataError(f"dataset {name!r} has no option {option!r}; allowed options: {listing}")
    for option, default in allowed.items():
        if default is inspect.Parameter.empty and option not in options:
            raise DataError(f"dataset {name!r} needs option {option!r}; allowed options: {listing}")
    return DATASETS[name](seed=check_int("seed", seed, minimum=0), **options)


#: file formats :func:`load_records` reads, by suffix: npz, csv, ML Privacy Meter's text (.txt) and .npy string arrays
RECORD_FORMATS = {".npz": "npz", ".csv": "csv", ".txt": "privacy-meter", ".npy": "privacy-meter"}


def load_records(path, option: str = "path", format: str = "auto", **options) -> Dataset:
    """Records and labels of one file, in a format fedaudit reads (``format``: auto from the suffix, or ``npz``,
    ``csv``, ``privacy-meter``); ``options`` go to that dataset's loader (``x_key``, ``label_column``, ...).

    Errors name ``option`` (a command-line flag, say) and the file."""
    path = str(path)
    if format == "auto":
        suffix = "".join(Path(path).suffixes[-1:]).lower()
        format = RECORD_FORMATS.get(suffix)
        if format is None:
            raise DataError(f"{option} {path!r}: unknown file type {suffix or '(no suffix)'!r}; allowed: "
                            + ", ".join(f"{k} ({v})" for k, v in RECORD_FORMATS.items()))
    if format not in set(RECORD_FORMATS.values()):
        known = ", ".join(sorted(set(RECORD_FORMATS.values())))
        raise DataError(f"{option}: unknown format {format!r}; allowed: auto, {known}")
    if not Path(path).is_file():
        raise DataError(f"{option} {path!r}: no such file")
    try:
        return load_dataset(format, path=path, **options)
    except DataError as exc:
        raise DataError(f"{option}: {exc}") from None


def validate_arrays(x, y, num_classes=None, source: str = "arrays") -> tuple[np.ndarray, np.ndarray, int]:
    """Check features ``x`` and labels ``y`` and return them as (float32 x, int64 y, num_classes).

    Checks: x numeric and finite with shape (n, ...); y 1-D, integer-valued, in [0, num_classes);
    same length; at least one record. ``num_classes`` defaults to ``max(y) + 1``.
    Raises DataError naming ``source`` (a file path or option).
    """
    x = _as_features(x, source)
    y = _as_labels(y, source)
    if len(x) != len(y):
        raise DataError(f"{source}: x has {len(x)} records but y has {len(y)} labels; they must match")
    if len(y) == 0:
        raise DataError(f"{source}: no records; a dataset needs at least one")
    if y.min() < 0:
        raise DataError(f"{source}: labels must be >= 0; found {y.min()}")
    if num_classes is None:
        num_classes = int(y.max()) + 1
    num_classes = check_int("num_classes", num_classes, minimum=1)
    if y.max() >= num_classes:
        raise DataError(
            f"{source}: labels must be < num_classes={num_classes} (allowed 0..{num_classes - 1}); "
            f"found {y.max()}"
        )
    return x, y, num_classes


def _as_features(x, source: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: x must be numeric; got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(f"{source}: x must have shape (records, features...) ; got shape {x.shape}")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{source}: x holds NaN or infinite values (or values too large for float32)")
    return x


def _as_labels(y, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{source}: labels y must be 1-D (one integer per record); got shape {y.shape}")
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind != "f" or not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
        raise DataError(f"{source}: labels y must be integers (class ids); got dtype {y.dtype} "
                        "with non-integer values")
    return y.astype(np.int64)


def _make(name: str, x, y, num_classes=None, source: str | None = None) -> Dataset:
    x, y, num_classes = validate_arrays(x, y, num_classes, source or f"dataset {name!r}")
    return Dataset(name, x, y, num_classes)


# ---------------------------------------------------------------------------------------------
# built-in datasets


@register_dataset("digits")
def _digits(seed: int, image: bool = False) -> Dataset:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1]; (n, 64), or (n, 8, 8, 1) with ``image``."""
    from sklearn.datasets import load_digits

    if not isinstance(image, bool):
        raise DataError(f"digits option 'image' must be true or false; got {image!r}")
    bunch = load_digits()
    x = bunch.data / 16.0
    if image:
        x = x.reshape(-1, 8, 8, 1)
    return _make("digits", x, bunch.target, 10)


@register_dataset("synthetic-purchase")
def _synthetic_purchase(seed: int, records: int = 2000, features: int = 600, classes: int = 20,
                        density: float = 0.3, flip: float = 0.3, subgroups: int = 1, zipf: float = 1.0,
                        label_noise: float = 0.0) -> Dataset:
    """Binary purchase-like records modelled on Purchase100.

    ``classes`` binary centroids with P(1) = ``density``; each record is a random class's centroid
    with every bit flipped with probability ``flip``. Deterministic from ``seed``.

    A long tail, for records of unequal difficulty (Feldman 2020's memorisation):

    - ``subgroups`` > 1 splits every class into that many subgroups with Zipf-distributed sizes (subgroup
      ``s`` = 1, 2, ... holds a share proportional to ``1 / s ** zipf``); each subgroup has its own prototype,
      the class centroid with every bit drawn anew with probability 1/2, and a record is its subgroup's
      prototype with ``flip`` noise. Records of rare subgroups look like few others, so a model can only
      memorise them;
    - ``label_noise``: that fraction of the records (exactly ``round(label_noise * records)``) get a label drawn
      uniformly from the other classes.

    With the defaults (``subgroups=1``, ``label_noise=0``) the records are those of earlier versions.
    """
    records = check_int("records", records, minimum=1)
    features = check_int("features", features, minimum=1)
    classes = check_int("classes", classes, minimum=1)
    density, flip = check_fraction("density", density), check_fraction("flip", flip)
    subgroups = check_int("subgroups", subgroups, minimum=1)
    if isinstance(zipf, bool) or not isinstance(zipf, (int, float, np.integer, np.floating)) \
            or not np.isfinite(zipf) or zipf < 0:
        raise DataError(f"option 'zipf' must be a number >= 0 (the subgroup sizes' Zipf exponent); got {zipf!r}")
    label_noise = check_fraction("label_noise", label_noise, upper_inclusive=False)
    if label_noise > 0 and classes < 2:
        raise DataError(f"option 'label_noise' needs at least 2 classes to flip labels between; got classes={classes}")
    rng = np.random.default_rng(seed)
    centroids = rng.random((classes, features)) < density
    y = rng.integers(0, classes, size=records)
    flips = rng.random((records, features)) < flip
    centres = centroids[y]
    if subgroups > 1:
        redraw = rng.random((classes, subgroups, features)) < 0.5
        prototypes = np.where(redraw, rng.random((classes, subgroups, features)) < density, centroids[:, None, :])
        share = 1.0 / np.arange(1, subgroups + 1, dtype=np.float64) ** float(zipf)
        group = rng.choice(subgroups, size=records, p=share / share.sum())
        centres = prototypes[y, group]
    if label_noise > 0:
        noisy = rng.choice(records, size=int(round(label_noise * records)), replace=False)
        y = y.copy()
        y[noisy] = (y[noisy] + rng.integers(1, classes, size=len(noisy))) % classes
    return _make("synthetic-purchase", centres ^ flips, y, classes)


@register_dataset("npz")
def _npz(seed: int, path, x_key: str = "x", y_key: str = "y", num_classes: int | None = None) -> Dataset:
    """Arrays ``x_key`` and ``y_key`` of an .npz archive (never unpickled)."""
    x, y = loaders.read_npz(path, x_key, y_key)
    return _make("npz", x, y, num_classes, f"npz file '{path}'")


@register_dataset("csv")
def _csv(seed: int, path, label_column: int | str = -1, header: bool | None = None,
         delimiter: str = ",", num_classes: int | None = None) -> Dataset:
    """A numeric CSV file; ``label_column`` is an index or a header name."""
    x, y = loaders.read_csv(path, label_column, header, delimiter)
    return _make("csv", x, y, num_classes, f"csv file '{path}'")


@register_dataset("privacy-meter")
def _privacy_meter(seed: int, path, input_shape=None, num_classes: int | None = None) -> Dataset:
    """ML Privacy Meter's ``features;label`` text format (or its .npy string arrays)."""
    x, y = loaders.read_privacy_meter_txt(path, input_shape)
    return _make("privacy-meter", x, y, num_classes, f"privacy-meter file '{path}'")


@register_dataset("cifar10")
def _cifar10(seed: int, path, limit: int | None = None) -> Dataset:
    """CIFAR-10 from a local folder of python batches (data_batch_1..5, test_batch)."""
    x, y = loaders.read_cifar(path, loaders.CIFAR10_FILES, b"labels", limit)
    return _make("cifar10", x, y, 10, f"CIFAR-10 folder '{path}'")


@register_dataset("cifar100")
def _cifar100(seed: int, path, limit: int | None = None) -> Dataset:
    """CIFAR-100 (fine labels) from a local folder of python batches (train, test)."""
    x, y = loaders.read_cifar(path, loaders.CIFAR100_FILES, b"fine_labels", limit)
    return _make("cifar100", x, y, 100, f"CIFAR-100 folder '{path}'")
