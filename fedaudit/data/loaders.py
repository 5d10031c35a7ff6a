"""Readers (and one writer) for the file formats fedaudit accepts.

Every reader returns raw ``(x, y)`` arrays; :func:`fedaudit.data.datasets.validate_arrays` checks
them afterwards. Readers never unpickle arbitrary objects: ``np.load`` always runs with
``allow_pickle=False``, and the CIFAR batches, which are pickles by nature, go through an
unpickler that only rebuilds NumPy arrays.

The small ``check_*`` helpers validate option values and are shared with ``datasets.py``.
"""

from __future__ import annotations

import csv
import importlib
import io
import os
import pickle
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fedaudit.errors import DataError

PathLike = str | os.PathLike

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR100_FILES = ("train", "test")
CIFAR_SHAPE = (3, 32, 32)  # how the pickles store an image: channels first


# ---------------------------------------------------------------------------------------------
# option checks


def check_int(option: str, value, minimum: int | None = None) -> int:
    """Return ``value`` as an int, or raise DataError naming ``option``.

    Integral floats (``2.0``, as TOML or a ``name:param`` spec may give) are accepted; bools are not.
    """
    is_integral = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer()
    )
    if isinstance(value, (bool, np.bool_)) or not is_integral:
        allowed = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise DataError(f"option '{option}' must be {allowed}; got {value!r}")
    if minimum is not None and int(value) < minimum:
        raise DataError(f"option '{option}' must be an integer >= {minimum}; got {int(value)}")
    return int(value)


def check_fraction(option: str, value, *, upper_inclusive: bool = True) -> float:
    """Return ``value`` as a float in [0, 1] (or [0, 1) when ``upper_inclusive`` is False)."""
    interval = "[0, 1]" if upper_inclusive else "[0, 1)"
    is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not is_number or not np.isfinite(value):
        raise DataError(f"option '{option}' must be a number in {interval}; got {value!r}")
    value = float(value)
    if value < 0 or value > 1 or (value == 1 and not upper_inclusive):
        raise DataError(f"option '{option}' must be a number in {interval}; got {value}")
    return value


def check_shape(option: str, value) -> tuple[int, ...] | None:
    """Return ``value`` as a tuple of positive ints (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise DataError(
            f"option '{option}' must be a non-empty list of positive integers such as [32, 32, 3]; "
            f"got {value!r}"
        )
    return tuple(check_int(f"{option}[{i}]", v, minimum=1) for i, v in enumerate(value))


def check_file(option: str, path) -> Path:
    """Return ``path`` as a Path to an existing regular file, or raise DataError."""
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"option '{option}' must be a file path; got {path!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"option '{option}': file '{path}' does not exist or is not a regular file")
    return path


def check_dir(option: str, path) -> Path:
    """Return ``path`` as a Path to an existing directory, or raise DataError."""
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"option '{option}' must be a folder path; got {path!r}")
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"option '{option}': folder '{path}' does not exist or is not a folder")
    return path


# ---------------------------------------------------------------------------------------------
# npz


def read_npz(path: PathLike, x_key: str = "x", y_key: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """Read features ``x_key`` and labels ``y_key`` from an ``.npz`` archive (no pickles)."""
    path = check_file("path", path)
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as exc:  # pickled content, which we refuse
        raise DataError(f"npz file '{path}' is not a plain .npz archive ({exc}); "
                        "store numeric arrays with np.savez") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"npz file '{path}' is not a readable .npz archive: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"npz file '{path}' is a single .npy array, not an .npz archive of x and y")
    with archive:
        for option, key in (("x_key", x_key), ("y_key", y_key)):
            if key not in archive.files:
                raise DataError(
                    f"npz file '{path}' has no array '{key}' (option '{option}'); "
                    f"arrays in the file: {', '.join(archive.files) or 'none'}"
                )
        try:
            return archive[x_key], archive[y_key]
        except ValueError as exc:  # object arrays need pickle
            raise DataError(f"npz file '{path}': arrays '{x_key}'/'{y_key}' cannot be read without "
                            f"pickle ({exc}); store plain numeric arrays") from exc


# ---------------------------------------------------------------------------------------------
# csv


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_row(path: Path, delimiter: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle, delimiter=delimiter):
                if any(cell.strip() for cell in row):
                    return [cell.strip() for cell in row]
    except UnicodeDecodeError as exc:
        raise DataError(f"csv file '{path}' is not UTF-8 text: {exc}") from exc
    raise DataError(f"csv file '{path}' is empty")


def _label_position(label_column, names: list[str] | None, width: int, path: Path) -> int:
    """Resolve ``label_column`` (int index or header name) to a non-negative column index."""
    if isinstance(label_column, str):
        if names is None:
            raise DataError(
                f"csv option 'label_column' is the name {label_column!r} but file '{path}' has no "
                "header row; use a column index or set header=True"
            )
        if label_column not in names:
            raise DataError(
                f"csv option 'label_column': file '{path}' has no column {label_column!r}; "
                f"columns: {', '.join(names)}"
            )
        return names.index(label_column)
    index = check_int("label_column", label_column)
    if not -width <= index < width:
        raise DataError(
            f"csv option 'label_column' is {index} but file '{path}' has {width} columns "
            f"(allowed: {-width}..{width - 1} or a header name)"
        )
    return index % width


def read_csv(
    path: PathLike,
    label_column: int | str = -1,
    header: bool | None = None,
    delimiter: str = ",",
) -> tuple[np.ndarray, np.ndarray]:
    """Read a numeric CSV file: one record per row, one column holds the label.

    ``header=None`` detects a header row (any non-numeric cell in the first row).
    """
    path = check_file("path", path)
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n\"":
        raise DataError(f"csv option 'delimiter' must be one character such as ',' or ';'; got {delimiter!r}")
    if header is not None and not isinstance(header, bool):
        raise DataError(f"csv option 'header' must be true, false or unset (auto-detect); got {header!r}")
    first = _first_row(path, delimiter)
    if header is None:
        header = not all(_is_number(cell) for cell in first)
    if len(first) < 2:
        raise DataError(
            f"csv file '{path}' has {len(first)} column with delimiter {delimiter!r}; "
            "need at least one feature column and one label column"
        )
    label_index = _label_position(label_column, first if header else None, len(first), path)
    try:
        table = np.loadtxt(path, delimiter=delimiter, skiprows=int(header), ndmin=2,
                           dtype=np.float64, encoding="utf-8")
    except ValueError as exc:
        raise DataError(f"csv file '{path}' is not all numbers in equal-length rows: {exc}") from exc
    if table.shape[0] == 0:
        raise DataError(f"csv file '{path}' has a header but no records")
    return np.delete(table, label_index, axis=1), table[:, label_index]


# ---------------------------------------------------------------------------------------------
# ML Privacy Meter text format


def _parse_privacy_meter(records: Iterable[Sequence[str]], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse records given as lists of ``;``-fields (channels..., label) into flat x and y."""
    rows, labels, width = [], [], None
    for number, fields in enumerate(records, start=1):
        if len(fields) < 2:
            raise DataError(
                f"{source}, record {number}: expected 'features;label' (channels separated by ';'), "
                f"got {len(fields)} field"
            )
        try:
            row = np.array([value for field in fields[:-1] for value in field.split(",")], dtype=np.float64)
            label = float(fields[-1])
        except ValueError as exc:
            raise DataError(f"{source}, record {number}: not a number ({exc})") from exc
        if width is None:
            width = (len(fields), row.size)
        elif (len(fields), row.size) != width:
            raise DataError(
                f"{source}, record {number}: has {len(fields) - 1} channel(s) and {row.size} values, "
                f"but record 1 has {width[0] - 1} channel(s) and {width[1]} values; all records must match"
            )
        rows.append(row)
        labels.append(label)
    if not rows:
        raise DataError(f"{source} holds no records")
    return np.stack(rows), np.array(labels)


def _privacy_meter_records(path: Path) -> Iterable[Sequence[str]]:
    """Yield each record's ``;``-fields from a text file, or from a ``.npy`` string array."""
    if path.suffix == ".npy":
        try:
            table = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"privacy-meter file '{path}' is not a .npy array of strings "
                            f"readable without pickle: {exc}") from exc
        if table.dtype.kind not in "US" or table.ndim != 2:
            raise DataError(
                f"privacy-meter file '{path}' must hold a 2-D string array (records x fields, "
                f"label last) as ML Privacy Meter saved it; got dtype {table.dtype}, shape {table.shape}"
            )
        return [[str(v) for v in row] for row in table.astype(str)]
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip().split(";") for line in handle if line.strip()]
    except UnicodeDecodeError as exc:
        raise DataError(f"privacy-meter file '{path}' is not UTF-8 text: {exc}") from exc


def _reshape_privacy_meter(x: np.ndarray, input_shape: tuple[int, ...] | None, source: str) -> np.ndarray:
    """Reshape flat records to ``input_shape``; 3-D shapes are images stored channel by channel."""
    if input_shape is None:
        return x
    if int(np.prod(input_shape)) != x.shape[1]:
        raise DataError(
            f"{source}: option 'input_shape' {list(input_shape)} needs {int(np.prod(input_shape))} values "
            f"per record, but records have {x.shape[1]}"
        )
    if len(input_shape) == 3:
        height, width, channels = input_shape
        return x.reshape(len(x), channels, height, width).transpose(0, 2, 3, 1)
    return x.reshape((len(x), *input_shape))


def read_privacy_meter_txt(path: PathLike, input_shape=None) -> tuple[np.ndarray, np.ndarray]:
    """Read ML Privacy Meter's record format into ``(x, y)``.

    One record per line: ``f1,f2,...;label``; images store one ``;``-field per channel,
    ``c1_f1,...;c2_f1,...;c3_f1,...;label``, each field H*W values. A ``.npy`` file holding the
    same fields as a string array (how ML Privacy Meter saved member sets) is read too.
    ``input_shape`` (H, W, C) gives channels-last images; another shape reshapes records as they
    are; None keeps records flat in file order.
    """
    path = check_file("path", path)
    input_shape = check_shape("input_shape", input_shape)
    source = f"privacy-meter file '{path}'"
    x, y = _parse_privacy_meter(_privacy_meter_records(path), source)
    return _reshape_privacy_meter(x, input_shape, source), y


def _format_matrix(values: np.ndarray) -> list[str]:
    """Format each row of a 2-D array as comma-separated numbers that read back exactly."""
    buffer = io.StringIO()
    np.savetxt(buffer, values, fmt="%.9g", delimiter=",")
    return buffer.getvalue().splitlines()


def write_privacy_meter_txt(path: PathLike, x, y) -> None:
    """Write ``(x, y)`` in ML Privacy Meter's text format (the inverse of the reader).

    ``x`` of shape (n, H, W, C) is written channel by channel, so it reads back with
    ``input_shape=(H, W, C)``; any other shape is written as one flat field per record.
    The file is written atomically (temporary name, then rename).
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or len(x) != len(y) or y.ndim != 1:
        raise DataError(
            f"write_privacy_meter_txt('{path}'): need x of shape (n, ...) and y of shape (n,); "
            f"got x {x.shape}, y {y.shape}"
        )
    if x.ndim == 4:
        channels = [x[..., c].reshape(len(x), -1) for c in range(x.shape[-1])]
    else:
        channels = [x.reshape(len(x), -1)]
    columns = [_format_matrix(channel) for channel in channels]
    labels = [str(int(label)) for label in y]
    lines = [";".join(fields) for fields in zip(*columns, labels)]
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------
# CIFAR python pickles


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds NumPy arrays and nothing else (CIFAR batches hold only those)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are allowed")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return getattr(importlib.import_module(module), name)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch: uint8 images (m, 32, 32, 3) and labels (m,)."""
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise DataError(f"CIFAR batch '{path}' is not a CIFAR python pickle: {exc}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in batch) \
            if isinstance(batch, dict) else type(batch).__name__
        raise DataError(
            f"CIFAR batch '{path}' must be a dict with keys 'data' and '{label_key.decode()}'; found {keys}"
        )
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if data.ndim != 2 or data.shape[1] != int(np.prod(CIFAR_SHAPE)) or len(data) != len(labels):
        raise DataError(
            f"CIFAR batch '{path}': 'data' must have shape (m, 3072) with one label per row; "
            f"got data {data.shape} and {len(labels)} labels"
        )
    return data.reshape(-1, *CIFAR_SHAPE).transpose(0, 2, 3, 1), labels


def read_cifar(folder: PathLike, files: Sequence[str], label_key: bytes,
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR python batches ``files`` from ``folder``, in order, keeping the first ``limit`` records.

    Returns float32 images (n, 32, 32, 3) scaled to [0, 1] and the labels.
    """
    folder = check_dir("path", folder)
    if limit is not None:
        limit = check_int("limit", limit, minimum=1)
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR folder '{folder}' lacks {', '.join(missing)}; it must hold the python batches "
            f"{', '.join(files)} (from the 'python version' archive)"
        )
    images, labels, count = [], [], 0
    for name in files:
        data, batch_labels = _read_cifar_batch(folder / name, label_key)
        images.append(data)
        labels.append(batch_labels)
        count += len(data)
        if limit is not None and count >= limit:
            break
    x = np.concatenate(images)[:limit]
    return x.astype(np.float32) / np.float32(255), np.concatenate(labels)[:limit]
