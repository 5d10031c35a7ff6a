"""The Ledger: which record of the dataset lives where (a client, the population, or the test split).

Clients' records are the members an attack tries to recognise; population records are never
trained on (non-members for attacks and reference models); test records are held out for utility.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedaudit.data.loaders import check_fraction, check_int
from fedaudit.data.partition import parse_partition
from fedaudit.data.partition import partition as split_among_clients
from fedaudit.errors import DataError

POPULATION = -1
TEST = -2

_KEYS = ("owner", "num_clients", "seed")


@dataclass
class Ledger:
    """Owner of every record: a client id in [0, num_clients), ``POPULATION`` or ``TEST``."""

    owner: np.ndarray
    num_clients: int
    seed: int

    def __post_init__(self) -> None:
        self.num_clients = check_int("num_clients", self.num_clients, minimum=1)
        self.seed = check_int("seed", self.seed, minimum=0)
        owner = np.asarray(self.owner)
        if owner.ndim != 1 or owner.dtype.kind not in "iu":
            raise DataError(f"ledger 'owner' must be a 1-D integer array; got dtype {owner.dtype}, "
                            f"shape {owner.shape}")
        if owner.size and (owner.min() < TEST or owner.max() >= self.num_clients):
            raise DataError(
                f"ledger 'owner' values must be client ids 0..{self.num_clients - 1}, "
                f"{POPULATION} (population) or {TEST} (test); found {owner.min()}..{owner.max()}"
            )
        self.owner = owner.astype(np.int64)

    def _where(self, value: int) -> np.ndarray:
        return np.flatnonzero(self.owner == value).astype(np.int64)

    def client_indices(self, k: int) -> np.ndarray:
        """Sorted record indices (into the dataset) that client ``k`` trains on."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.num_clients:
            raise DataError(f"client id must be an integer in 0..{self.num_clients - 1}; got {k!r}")
        return self._where(int(k))

    def population_indices(self) -> np.ndarray:
        """Sorted indices of population records (never trained on)."""
        return self._where(POPULATION)

    def test_indices(self) -> np.ndarray:
        """Sorted indices of the held-out test records."""
        return self._where(TEST)

    def members(self) -> np.ndarray:
        """Sorted indices of all records some client trains on."""
        return np.flatnonzero(self.owner >= 0).astype(np.int64)

    def summary(self) -> dict:
        """Counts: records, per-client list, members, population and test (plain ints)."""
        clients = np.bincount(self.owner[self.owner >= 0], minlength=self.num_clients)
        return {
            "records": int(self.owner.size),
            "clients": [int(c) for c in clients],
            "members": int(clients.sum()),
            "population": int(np.sum(self.owner == POPULATION)),
            "test": int(np.sum(self.owner == TEST)),
            "seed": self.seed,
        }

    def save(self, path) -> None:
        """Write the ledger to ``path`` as .npz, atomically (``path + '.tmp'``, then rename)."""
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        try:
            with open(temporary, "wb") as handle:
                np.savez(handle, owner=self.owner, num_clients=np.int64(self.num_clients),
                         seed=np.int64(self.seed))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    @classmethod
    def load(cls, path) -> Ledger:
        """Read a ledger written by :meth:`save`; DataError if missing or malformed."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"ledger file '{path}' does not exist")
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = [key for key in _KEYS if key not in archive.files]
                if missing:
                    raise DataError(f"ledger file '{path}' lacks {', '.join(missing)}; "
                                    f"a ledger holds {', '.join(_KEYS)}")
                owner, num_clients, seed = (archive[key] for key in _KEYS)
        except DataError:
            raise
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, AttributeError, TypeError) as exc:
            raise DataError(f"ledger file '{path}' is not a ledger .npz: {exc}") from exc
        try:
            if num_clients.ndim or seed.ndim:
                raise DataError("num_clients and seed must be scalars")
            return cls(owner, num_clients.item(), seed.item())
        except DataError as exc:
            raise DataError(f"ledger file '{path}' is malformed: {exc}") from exc


def build_ledger(labels, num_clients: int, *, partition: str = "iid", param: float | None = None,
                 population_fraction: float = 0.25, test_fraction: float = 0.2, seed: int = 0,
                 min_per_client: int = 1) -> Ledger:
    """Assign every record: a test split, then a population split, then the rest among clients.

    Records are shuffled with a generator derived from ``seed``; the clients' share is split with
    :func:`fedaudit.data.partition.partition` (``partition`` may also be a spec like ``"dirichlet:0.1"``).
    The same inputs always give the same ledger.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise DataError(f"build_ledger: labels must be a non-empty 1-D array; got shape {labels.shape}")
    num_clients = check_int("num_clients", num_clients, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    method, param = _resolve_partition(partition, param)
    test_count, population_count = _split_counts(len(labels), population_fraction, test_fraction)
    split_rng, partition_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))

    order = split_rng.permutation(len(labels))
    owner = np.full(len(labels), POPULATION, dtype=np.int64)
    owner[order[:test_count]] = TEST
    rest = order[test_count + population_count:]
    if num_clients > len(rest):
        raise DataError(
            f"build_ledger: more clients (num_clients={num_clients}) than client records "
            f"({len(rest)} of {len(labels)} left after test_fraction={test_fraction} and "
            f"population_fraction={population_fraction})"
        )
    parts = split_among_clients(labels[rest], num_clients, method, param, partition_rng, min_per_client)
    for k, positions in enumerate(parts):
        owner[rest[positions]] = k
    return Ledger(owner, num_clients, seed)


def _resolve_partition(spec: str, param: float | None) -> tuple[str, float | None]:
    """Accept ``partition="dirichlet", param=0.1`` or ``partition="dirichlet:0.1"``."""
    method, spec_param = parse_partition(spec)
    if spec_param is not None and param is not None:
        raise DataError(f"partition {spec!r} already has a parameter; do not also pass param={param!r}")
    return method, param if spec_param is None else spec_param


def _split_counts(n: int, population_fraction, test_fraction) -> tuple[int, int]:
    """Number of test and population records for ``n`` records."""
    population_fraction = check_fraction("population_fraction", population_fraction, upper_inclusive=False)
    test_fraction = check_fraction("test_fraction", test_fraction, upper_inclusive=False)
    if population_fraction + test_fraction >= 1:
        raise DataError(
            f"population_fraction ({population_fraction}) + test_fraction ({test_fraction}) must be "
            "below 1 so that clients keep some records"
        )
    return round(test_fraction * n), round(population_fraction * n)
