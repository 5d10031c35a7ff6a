"""ML Privacy Meter's data handler: known and held-out members and non-members for a trained attack.

``attack_data(dataset_path, member_dataset_path, batch_size, attack_percentage, input_shape,
normalization=False)`` reads ML Privacy Meter's files (``features;label`` text, or its ``.npy`` string
arrays) exactly where a 2021 script passed them; :meth:`attack_data.from_arrays` builds the same object
from NumPy arrays (members, non-members). NumPy only.

The split, as in ML Privacy Meter, but seeded and without its overlap:

- members are the target model's training records (``member_dataset_path``); non-members are the
  population records (``dataset_path``) that are not members (records are compared by value and label);
- ``attack_percentage`` percent of the members, and as many non-members, are the attack's *known*
  records (:meth:`train_split`): the attack trains on them;
- the other members, and as many further non-members (disjoint from the known ones), are the records the
  attack is evaluated on (:meth:`test_split`). No record is in both.

``normalization=True`` applies ML Privacy Meter's per-channel normalisation ``(x / 255 - means) /
stddevs``, with ``means`` and ``stddevs`` (per last-axis channel, on the 0..1 scale) computed from the
members unless the caller sets them first, as the CIFAR tutorial did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fedaudit.data.datasets import validate_arrays
from fedaudit.data.loaders import check_shape, read_privacy_meter_txt
from fedaudit.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class AttackSplit:
    """Members and non-members of one side of the split (known records, or held-out records)."""

    members_x: np.ndarray
    members_y: np.ndarray
    nonmembers_x: np.ndarray
    nonmembers_y: np.ndarray

    @property
    def x(self) -> np.ndarray:
        """Members then non-members."""
        return np.concatenate([self.members_x, self.nonmembers_x])

    @property
    def y(self) -> np.ndarray:
        return np.concatenate([self.members_y, self.nonmembers_y])

    @property
    def membership(self) -> np.ndarray:
        """1 for members, 0 for non-members, in the order of :attr:`x`."""
        return np.r_[np.ones(len(self.members_y), np.int64), np.zeros(len(self.nonmembers_y), np.int64)]

    def __len__(self) -> int:
        return len(self.members_y) + len(self.nonmembers_y)


def record_hashes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One hash per record of its float32 values and its label (equal records, equal hashes)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    y = np.asarray(y, dtype=np.int64)
    return np.array([hash(row.tobytes() + int(label).to_bytes(8, "little", signed=True))
                     for row, label in zip(x, y)], dtype=np.int64)


def _check_percentage(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or not 0 < value <= 100:
        raise DataError(f"attack_percentage: must be a number in (0, 100], the percentage of members the "
                        f"attack trains on; got {value!r}")
    return float(value)


def _check_batch(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"batch_size: must be a positive integer; got {value!r}")
    return int(value)


class attack_data:  # noqa: N801  (ML Privacy Meter's name)
    """Members and population records for a trained membership attack (ML Privacy Meter's API).

    Args:
        dataset_path: population records (ML Privacy Meter text format or its ``.npy``); the non-members
            are drawn from those that are not members.
        member_dataset_path: the target model's training records (same formats).
        batch_size: batch size the attack trains with (the attack's default).
        attack_percentage: percent of the members the attack trains on (the rest are evaluated).
        input_shape: shape of one record, e.g. ``(600,)`` or ``(32, 32, 3)`` (images channels last).
        normalization: ML Privacy Meter's per-channel normalisation (see the module docstring).
        seed: seeds the shuffles of members and population.
    """

    def __init__(self, dataset_path, member_dataset_path, batch_size, attack_percentage, input_shape=None,
                 normalization=False, seed: int = 0):
        input_shape = check_shape("input_shape", input_shape)
        mx, my = read_privacy_meter_txt(member_dataset_path, input_shape)
        px, py = read_privacy_meter_txt(dataset_path, input_shape)
        self._setup(validate_arrays(mx, my, source=f"member_dataset_path '{member_dataset_path}'")[:2],
                    validate_arrays(px, py, source=f"dataset_path '{dataset_path}'")[:2],
                    batch_size, attack_percentage, normalization, seed, input_shape)

    @classmethod
    def from_arrays(cls, members_x, members_y, nonmembers_x, nonmembers_y, *, batch_size: int = 64,
                    attack_percentage: float = 50, normalization: bool = False, seed: int = 0) -> "attack_data":
        """Build the handler from arrays: the target's training records and records it did not train on
        (any of the latter that equal a member are dropped)."""
        self = cls.__new__(cls)
        members = validate_arrays(members_x, members_y, source="members_x/members_y")[:2]
        nonmembers = validate_arrays(nonmembers_x, nonmembers_y, source="nonmembers_x/nonmembers_y")[:2]
        self._setup(members, nonmembers, batch_size, attack_percentage, normalization, seed,
                    tuple(members[0].shape[1:]))
        return self

    def _setup(self, members, population, batch_size, attack_percentage, normalization, seed, input_shape):
        (mx, my), (px, py) = members, population
        if mx.shape[1:] != px.shape[1:]:
            raise DataError(f"member records have shape {mx.shape[1:]} but population records have shape "
                            f"{px.shape[1:]}; both files must hold records of the same shape")
        self.batch_size = _check_batch(batch_size)
        self.attack_percentage = _check_percentage(attack_percentage)
        self.normalization = bool(normalization)
        self.input_shape = tuple(input_shape) if input_shape is not None else tuple(mx.shape[1:])
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(my))
        self.members_x, self.members_y = mx[order], my[order]
        member_hashes = set(record_hashes(mx, my).tolist())
        keep = np.array([h not in member_hashes for h in record_hashes(px, py)], dtype=bool)
        if not keep.any():
            raise DataError("dataset_path: every population record is also a member; the attack needs "
                            "population records the target did not train on")
        if (~keep).any():
            log.info("dropped %d population records that are members", int((~keep).sum()))
        pool = np.flatnonzero(keep)[rng.permutation(int(keep.sum()))]
        self.population_x, self.population_y = px[pool], py[pool]
        self.training_size = len(self.members_y)
        self.attack_size = int(self.attack_percentage / 100.0 * self.training_size)
        if self.attack_size < 1:
            raise DataError(f"attack_percentage: {self.attack_percentage}% of {self.training_size} members "
                            "is no record; allowed: a percentage that leaves the attack at least one member")
        self.input_channels = self.input_shape[-1] if self.input_shape else 1
        self.means, self.stddevs = None, None

    # -- normalisation (ML Privacy Meter's) ------------------------------------------------------------

    def compute_moments(self, features=None) -> None:
        """Per-channel means and standard deviations of the members, on the 0..1 scale (x / 255)."""
        f = self.members_x if features is None else np.asarray(features, np.float32)
        flat = f.reshape(-1, f.shape[-1]) if f.ndim > 1 else f.reshape(-1, 1)
        self.means = (flat.mean(axis=0) / 255.0).astype(np.float32)
        self.stddevs = (flat.std(axis=0) / 255.0).astype(np.float32)

    def normalize(self, f: np.ndarray) -> np.ndarray:
        """``(f / 255 - means) / stddevs`` per channel (the last axis)."""
        if self.means is None or self.stddevs is None:
            self.compute_moments()
        stddevs = np.where(np.asarray(self.stddevs, np.float32) > 0, np.asarray(self.stddevs, np.float32), 1.0)
        return ((np.asarray(f, np.float32) / 255.0 - np.asarray(self.means, np.float32)) / stddevs).astype(np.float32)

    def _prepared(self, x: np.ndarray) -> np.ndarray:
        return self.normalize(x) if self.normalization else x

    # -- the split ---------------------------------------------------------------------------------------

    def train_split(self) -> AttackSplit:
        """The known records the attack trains on: ``attack_size`` members and as many non-members."""
        a = self.attack_size
        n_non = min(a, len(self.population_y))
        if n_non < a:
            log.warning("only %d non-members for %d known members: the known records are unbalanced", n_non, a)
        return AttackSplit(self._prepared(self.members_x[:a]), self.members_y[:a],
                           self._prepared(self.population_x[:n_non]), self.population_y[:n_non])

    def test_split(self) -> AttackSplit:
        """The held-out records the attack is evaluated on: the other members and as many further
        non-members, disjoint from :meth:`train_split`'s."""
        a = self.attack_size
        members = slice(a, self.training_size)
        n_members = self.training_size - a
        if n_members < 1:
            raise DataError(f"attack_percentage: {self.attack_percentage}% leaves no member to evaluate the "
                            "attack on; allowed: a percentage below 100 (ML Privacy Meter's tutorial used 50)")
        start = min(a, len(self.population_y))
        n_non = min(n_members, len(self.population_y) - start)
        if n_non < 1:
            raise DataError(f"dataset_path: the population has {len(self.population_y)} non-member records, all "
                            "used to train the attack; none is left to evaluate it on")
        if n_non < n_members:
            log.warning("only %d held-out non-members for %d held-out members", n_non, n_members)
        return AttackSplit(self._prepared(self.members_x[members]), self.members_y[members],
                           self._prepared(self.population_x[start:start + n_non]),
                           self.population_y[start:start + n_non])

    # ML Privacy Meter's method names (they returned tf.data datasets; these return arrays)
    load_train = train_split
    load_test = test_split

    def __repr__(self) -> str:
        return (f"attack_data(members={self.training_size}, population={len(self.population_y)}, "
                f"attack_size={self.attack_size}, batch_size={self.batch_size}, input_shape={self.input_shape})")


#: the array constructor as a plain function
from_arrays = attack_data.from_arrays

__all__ = ["attack_data", "from_arrays", "AttackSplit", "record_hashes"]
