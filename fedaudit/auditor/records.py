"""Which records the auditor scores, who owns them, which fold each falls in and what the adversary knows.

NumPy only. Fixed for the whole run (derived from the ledger and the seed), written once to
``run_dir/audit/records.npz`` so that a restarted auditor and :func:`fedaudit.auditor.aggregate_run` see the
same split.

- audited records: every client's training records (members) and every population record (non-members);
- ``source``: the client whose model scores the record under the ``server`` threat model: a member's owner,
  and for a population record a seeded pseudo-owner drawn uniformly among the clients, so that the
  server's record-level metric compares "x against the update of the client that holds it" for members
  with the same question for non-members (per-client metrics use every population record);
- ``fold``: cross-fitting folds, stratified by membership and source client;
- ``known``: the adversary's prior knowledge, ``attack_fraction`` of min(members, non-members) records of each
  kind (balanced), drawn at random in equal numbers from every fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedaudit.errors import FedAuditError
from fedaudit.rundir import atomic_save_npz

# Stream tags that derive this module's generators from the scenario's seed (stable across versions).
_FOLDS, _KNOWN, _PSEUDO = 11, 12, 13


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 4, stream]))


@dataclass
class AuditRecords:
    """One row per audited record (members first, then population records, each sorted by index)."""

    index: np.ndarray     # (n,) int64 index into the dataset
    owner: np.ndarray     # (n,) int64 client id, -1 for population records
    source: np.ndarray    # (n,) int64 client whose model scores the record under `server`
    label: np.ndarray     # (n,) int64 class label
    fold: np.ndarray      # (n,) int64 in [0, folds)
    known: np.ndarray     # (n,) bool: in the adversary's labelled prior knowledge
    num_clients: int
    folds: int

    @property
    def member(self) -> np.ndarray:
        return self.owner >= 0

    def __len__(self) -> int:
        return int(self.index.size)

    def save(self, path: str | Path) -> None:
        atomic_save_npz(path, index=self.index, owner=self.owner, source=self.source, label=self.label,
                        fold=self.fold, known=self.known, num_clients=np.int64(self.num_clients),
                        folds=np.int64(self.folds))

    @classmethod
    def load(cls, path: str | Path) -> "AuditRecords":
        path = Path(path)
        if not path.is_file():
            raise FedAuditError(f"{path}: no audit records; is this the run dir of an audited run "
                                "([audit] enabled = true)?")
        with np.load(path, allow_pickle=False) as z:
            return cls(index=z["index"], owner=z["owner"], source=z["source"], label=z["label"], fold=z["fold"],
                       known=z["known"].astype(bool), num_clients=int(z["num_clients"]), folds=int(z["folds"]))


def audit_records(owner: np.ndarray, labels: np.ndarray, num_clients: int, *, folds: int,
                  attack_fraction: float, seed: int) -> AuditRecords:
    """The audited records of a ledger (``owner`` column) and their folds and known subset."""
    owner = np.asarray(owner, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    members = np.flatnonzero(owner >= 0)
    population = np.flatnonzero(owner == -1)
    if population.size < 2:
        raise FedAuditError(f"audit: needs population records (non-members), got {population.size}; "
                            "set data.population_fraction above 0 (e.g. 0.25)")
    if members.size < 2:
        raise FedAuditError(f"audit: needs client records (members), got {members.size}")
    index = np.r_[members, population].astype(np.int64)
    own = owner[index]
    n = index.size
    source = own.copy()
    pseudo = _rng(seed, _PSEUDO).integers(0, num_clients, size=population.size)
    source[members.size:] = pseudo
    # folds: within each (member?, source) group, deal records round-robin in a random order
    fold = np.empty(n, dtype=np.int64)
    rng = _rng(seed, _FOLDS)
    offset = 0
    for is_member in (True, False):
        for k in range(num_clients):
            group = np.flatnonzero(((own >= 0) == is_member) & (source == k))
            order = rng.permutation(group)
            fold[order] = (offset + np.arange(order.size)) % folds
            offset += order.size   # keeps fold sizes even across groups
    n_known = int(round(attack_fraction * min(members.size, population.size)))
    n_known = max(1, min(n_known, members.size, population.size))
    # the known records, spread evenly over the folds: every fold's attack is then fitted on the same
    # numbers of known members and non-members, so no fold's scores are shifted by a different class balance
    rng = _rng(seed, _KNOWN)
    known = np.zeros(n, dtype=bool)
    is_member = own >= 0
    for kind in (is_member, ~is_member):
        per_fold = np.full(folds, n_known // folds) + (np.arange(folds) < n_known % folds)
        for f in rng.permutation(folds):   # folds smaller than their share pass the rest on
            pool = np.flatnonzero(kind & (fold == f) & ~known)
            take = min(int(per_fold[f]), pool.size)
            known[rng.choice(pool, size=take, replace=False)] = True
            spill = int(per_fold[f]) - take
            if spill:
                per_fold[(f + 1) % folds] += spill
        missing = n_known - int(np.sum(known & kind))
        if missing > 0:
            known[rng.choice(np.flatnonzero(kind & ~known), size=missing, replace=False)] = True
    return AuditRecords(index=index, owner=own, source=source, label=labels[index], fold=fold, known=known,
                        num_clients=int(num_clients), folds=int(folds))
