"""Which records the auditor scores, who owns them, which fold each falls in and what the adversary knows.

NumPy only. Fixed for the whole run (derived from the ledger and the seed), written once to
``run_dir/audit/records.npz`` so that a restarted auditor and :func:`fedaudit.auditor.aggregate_run` see the
same split.

- audited records: every client's training records (members) and every population record (non-members);
- ``source``: the client whose model scores the record under the ``server`` threat model: a member's owner,
  and for a population record a seeded pseudo-owner drawn uniformly among the clients, so that the
  server's record-level metric compares "x against the update of the client that holds it" for members
  with the same question for non-members (when that client did not reply in a round, a replying client
  drawn from the seed and the round stands in: see :meth:`AuditRecords.round_source`);
- ``fold``: cross-fitting folds, stratified by membership and source client;
- ``known``: the adversary's prior knowledge, ``attack_fraction`` of min(members, non-members) records of each
  kind (balanced), drawn at random in equal numbers from every fold;
- ``population_sample``: the population records scored under *every* audited client model (``[audit]
  population_sample``, every population record when there are fewer): the non-member side of each client's
  metrics, the calibration set of attack P and RMIA's comparison records. Drawn stratified by fold so that
  every fold has its share of known non-members in it;
- ``source_sample``: the members whose source (the client that holds them) the server tries to infer each
  round, scored under every replying client's model (``[audit] source_sample``, every member when fewer).

The server's work per round is then linear in the federation: every audited record under one model (its
owner's, or its pseudo-owner's), plus ``population_sample + source_sample`` records under every client model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedaudit.errors import FedAuditError
from fedaudit.rundir import atomic_save_npz

# Stream tags that derive this module's generators from the scenario's seed (stable across versions).
_FOLDS, _KNOWN, _PSEUDO, _POP_SAMPLE, _SOURCE_SAMPLE, _ROUND_SOURCE, _TARGETS = 11, 12, 13, 14, 15, 16, 17


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
    population_sample: np.ndarray = None   # (P,) positions (into these rows) of the sampled population records
    source_sample: np.ndarray = None       # (S,) positions of the members source inference attributes
    seed_for_rounds: int = 0               # the scenario's seed: draws the per-round sources of orphaned records

    def __post_init__(self):
        pop, mem = np.flatnonzero(self.owner < 0), np.flatnonzero(self.owner >= 0)
        if self.population_sample is None:
            self.population_sample = pop
        if self.source_sample is None:
            self.source_sample = mem
        self.population_sample = np.asarray(self.population_sample, dtype=np.int64)
        self.source_sample = np.asarray(self.source_sample, dtype=np.int64)

    @property
    def member(self) -> np.ndarray:
        return self.owner >= 0

    def client_sizes(self) -> np.ndarray:
        """(num_clients,) audited records each client holds (one count, not a scan per client)."""
        own = self.owner[self.owner >= 0]
        return np.bincount(own, minlength=max(int(self.num_clients), int(own.max(initial=-1)) + 1))

    def round_source(self, clients, round_: int) -> np.ndarray:
        """The client whose model scores each record under ``server`` in a round where ``clients`` replied.

        A member: its owner when it replied, else -1 (no model of this round trained on it). A population
        record: its pseudo-owner when it replied, else a client drawn (seeded by the round) among those that
        replied, so that every population record is scored in every round with at least one reply.
        """
        clients = np.asarray(sorted(int(k) for k in clients), dtype=np.int64)
        out = np.full(len(self), -1, dtype=np.int64)
        if clients.size == 0:
            return out
        replied = np.zeros(max(self.num_clients, int(clients.max()) + 1), dtype=bool)
        replied[clients] = True
        src_ok = (self.source >= 0) & (self.source < replied.size)
        ok = src_ok.copy()
        ok[src_ok] = replied[self.source[src_ok]]
        out[ok] = self.source[ok]
        orphans = np.flatnonzero(~ok & ~self.member)
        if orphans.size:
            rng = _rng(self.seed_for_rounds, _ROUND_SOURCE * 1_000_003 + int(round_))
            out[orphans] = clients[rng.integers(0, clients.size, size=orphans.size)]
        return out

    def __len__(self) -> int:
        return int(self.index.size)

    def save(self, path: str | Path) -> None:
        atomic_save_npz(path, index=self.index, owner=self.owner, source=self.source, label=self.label,
                        fold=self.fold, known=self.known, num_clients=np.int64(self.num_clients),
                        folds=np.int64(self.folds), population_sample=self.population_sample,
                        source_sample=self.source_sample, seed_for_rounds=np.int64(self.seed_for_rounds))

    @classmethod
    def load(cls, path: str | Path) -> "AuditRecords":
        path = Path(path)
        if not path.is_file():
            raise FedAuditError(f"{path}: no audit records; is this the run dir of an audited run "
                                "([audit] enabled = true)?")
        with np.load(path, allow_pickle=False) as z:
            optional = {k: z[k] for k in ("population_sample", "source_sample") if k in z.files}
            if "seed_for_rounds" in z.files:
                optional["seed_for_rounds"] = int(z["seed_for_rounds"])
            return cls(index=z["index"], owner=z["owner"], source=z["source"], label=z["label"], fold=z["fold"],
                       known=z["known"].astype(bool), num_clients=int(z["num_clients"]), folds=int(z["folds"]),
                       **optional)


def audit_records(owner: np.ndarray, labels: np.ndarray, num_clients: int, *, folds: int,
                  attack_fraction: float, seed: int, population_sample: int | None = None,
                  source_sample: int | None = None) -> AuditRecords:
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
        rows = np.flatnonzero((own >= 0) == is_member)
        rows = rows[np.argsort(source[rows], kind="stable")]     # grouped by source, ascending within a group
        bounds = np.searchsorted(source[rows], np.arange(num_clients + 1))
        for k in range(num_clients):        # one sort, not a scan of every record per client
            order = rng.permutation(rows[bounds[k]:bounds[k + 1]])
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
    pop_rows = np.flatnonzero(~is_member)
    pop_sample = _sample(pop_rows, population_sample, fold[pop_rows], _rng(seed, _POP_SAMPLE))
    src_sample = _sample(np.flatnonzero(is_member), source_sample, None, _rng(seed, _SOURCE_SAMPLE))
    return AuditRecords(index=index, owner=own, source=source, label=labels[index], fold=fold, known=known,
                        num_clients=int(num_clients), folds=int(folds), population_sample=pop_sample,
                        source_sample=src_sample, seed_for_rounds=int(seed))


def scenario_records(scenario, owner: np.ndarray, labels: np.ndarray, num_clients: int) -> AuditRecords:
    """:func:`audit_records` with the scenario's ``[audit]`` settings and seed."""
    a = scenario.audit
    return audit_records(owner, labels, num_clients, folds=a.folds, attack_fraction=a.attack_fraction,
                         seed=scenario.federation.seed, population_sample=a.population_sample,
                         source_sample=a.source_sample)


def active_targets(records: AuditRecords, count: int, seed: int) -> np.ndarray:
    """Positions (into ``records``) of the target records of an active adversary: ``count // 2`` members and as
    many records of the population sample (scored under every client's model), drawn from the seed; fewer when
    either side has fewer. The same for the federation that manipulates them and the auditor that scores them."""
    rng = _rng(seed, _TARGETS)
    members = np.flatnonzero(records.member)
    half = int(count) // 2
    mine = rng.choice(members, size=min(half, members.size), replace=False)
    pop = rng.choice(records.population_sample, size=min(half, records.population_sample.size), replace=False)
    return np.sort(np.r_[mine, pop]).astype(np.int64)


def _sample(rows: np.ndarray, size: int | None, strata: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """``size`` of ``rows`` (all of them when fewer or ``size`` is None), spread evenly over ``strata``; sorted."""
    if size is None or size >= rows.size:
        return np.sort(rows)
    if strata is None:
        return np.sort(rng.choice(rows, size=int(size), replace=False))
    order = rng.permutation(rows.size)                     # a random order, then dealt stratum by stratum
    s = strata[order]
    rank = np.empty(rows.size, dtype=np.int64)
    for v in np.unique(s):
        where = np.flatnonzero(s == v)
        rank[where] = np.arange(where.size)
    pick = order[np.lexsort((np.arange(rows.size), rank))][: int(size)]
    return np.sort(rows[pick])
