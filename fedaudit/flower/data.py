"""Which records each partition of a Flower App holds, and which records are the population: :class:`FederatedData`.

The same object serves both sides of an app, the way Flower Datasets' ``FederatedDataset`` does:

- the ClientApp trains on ``data.load_partition(partition_id)``;
- the ServerApp hands ``data`` to :func:`fedaudit.flower.audit_strategy`, which tells the auditor that partition
  k's records are members, that the population records (never trained on) are the non-members, and that the
  test records measure the global model's accuracy.

Build it by splitting arrays (:meth:`FederatedData.partition`: ``"iid"``, ``"dirichlet:ALPHA"`` by label,
``"shards:N"``; seeded, so the ServerApp and every ClientApp that build it get the same split), or from index
arrays an app already has (:meth:`FederatedData.from_partitions`). Both sides must build it the same way; a
function of the number of partitions (``load(num_partitions) -> FederatedData``) is accepted by
:func:`~fedaudit.flower.audit_strategy` where that number is only known from the clients (``num-partitions``).
NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedaudit.data.datasets import validate_arrays
from fedaudit.data.ledger import POPULATION, TEST, Ledger, build_ledger
from fedaudit.errors import DataError

GIVEN = "given"       # the partition spec recorded when an app gave its own index arrays
SPLITS = ("population", "test")


@dataclass
class FederatedData:
    """Records ``x``, labels ``y`` and the ledger saying who holds each record (a partition, population, test)."""

    x: np.ndarray
    y: np.ndarray
    ledger: Ledger
    num_classes: int
    partitioner: str = GIVEN
    name: str = "flower-app"

    @classmethod
    def partition(cls, x, y, num_partitions: int, partitioner: str = "iid", *, population_fraction: float = 0.25,
                  test_fraction: float = 0.2, seed: int = 0, num_classes: int | None = None,
                  name: str = "flower-app") -> "FederatedData":
        """Split ``x, y``: a test split, a population split (never trained on), the rest among the partitions."""
        x, y, num_classes = validate_arrays(x, y, num_classes, source=f"{name} data")
        ledger = build_ledger(y, num_partitions, partition=partitioner, population_fraction=population_fraction,
                              test_fraction=test_fraction, seed=seed)
        return cls(x, y, ledger, num_classes, partitioner, name)

    @classmethod
    def from_partitions(cls, x, y, partitions, population, test, *, num_classes: int | None = None,
                        name: str = "flower-app") -> "FederatedData":
        """From index arrays into ``x``: ``partitions[k]`` are partition k's records, ``population`` records no
        partition trains on, ``test`` held-out records. No record may be in two of them."""
        x, y, num_classes = validate_arrays(x, y, num_classes, source=f"{name} data")
        n = len(y)
        owner = np.full(n, -3, dtype=np.int64)          # -3: in no set (not audited, not used)
        sets = [(f"partitions[{k}]", p, k) for k, p in enumerate(partitions)]
        sets += [("population", population, POPULATION), ("test", test, TEST)]
        if not partitions:
            raise DataError("partitions: give at least one partition's indices")
        for label, idx, value in sets:
            idx = np.asarray(idx)
            if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
                raise DataError(f"{label}: expected a 1-D array of integer indices into x, got {idx.dtype} "
                                f"shape {idx.shape}")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise DataError(f"{label}: indices must lie in 0..{n - 1}, found {idx.min()}..{idx.max()}")
            if idx.size == 0:
                raise DataError(f"{label}: holds no record; every partition, the population and the test split "
                                "need at least one")
            values, counts = np.unique(idx, return_counts=True)
            twice = np.r_[values[counts > 1], idx[owner[idx] != -3]]
            if twice.size:
                raise DataError(f"{label}: record {int(twice[0])} is given twice; partitions, population and test "
                                "must be disjoint")
            owner[idx] = value
        keep = np.flatnonzero(owner != -3)
        if keep.size != n:      # records in no set are left out (the ledger covers exactly the records given)
            x, y, owner = x[keep], y[keep], owner[keep]
        return cls(x, y, Ledger(owner, len(partitions), 0), num_classes, GIVEN, name)

    # ---- what the ClientApp and the auditor read ------------------------------------------------------------

    @property
    def num_partitions(self) -> int:
        return self.ledger.num_clients

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def load_partition(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the records partition ``partition_id`` trains on."""
        if isinstance(partition_id, bool) or not isinstance(partition_id, (int, np.integer)) \
                or not 0 <= int(partition_id) < self.num_partitions:
            raise DataError(f"partition_id: must be an integer in 0..{self.num_partitions - 1} (this data has "
                            f"{self.num_partitions} partitions), got {partition_id!r}")
        idx = self.ledger.client_indices(int(partition_id))
        return self.x[idx], self.y[idx]

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the ``population`` (never trained on) or ``test`` records."""
        if split not in SPLITS:
            raise DataError(f"split: unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        idx = self.ledger.population_indices() if split == "population" else self.ledger.test_indices()
        return self.x[idx], self.y[idx]

    def fractions(self) -> tuple[float, float]:
        """(population fraction, test fraction) of the records, as a scenario's [data] states them."""
        s = self.ledger.summary()
        return s["population"] / s["records"], s["test"] / s["records"]


def resolve_data(data, num_partitions: int | None) -> FederatedData:
    """``data`` itself, or ``data(num_partitions)`` for a function; checked against the clients' count."""
    if callable(data) and not isinstance(data, FederatedData):
        if num_partitions is None:
            raise DataError("data: a function of the number of partitions needs the clients to report it "
                            "(node_config 'num-partitions', tagged by fedaudit.flower.partition_id_mod); pass a "
                            "FederatedData instead")
        data = data(int(num_partitions))
    if not isinstance(data, FederatedData):
        raise DataError(f"data: expected a fedaudit.flower.FederatedData (or a function returning one), got "
                        f"{type(data).__name__}")
    if num_partitions is not None and int(num_partitions) != data.num_partitions:
        raise DataError(f"data: has {data.num_partitions} partitions but the federation's clients report "
                        f"num-partitions = {num_partitions}; build the data with the federation's number of "
                        "partitions (the ClientApp's context.node_config['num-partitions'])")
    return data


__all__ = ["FederatedData", "resolve_data", "GIVEN"]
