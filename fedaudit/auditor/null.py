"""FedMIA's null models per record and round: a fixed number of other replying clients (the audit stays linear).

Under ``server``, each audited record is scored under the model of its source this round (a member under its
owner's, a population record under its pseudo-owner's or a stand-in: :meth:`AuditRecords.round_source`).
The clients' training sets are disjoint, so every other replying client's model did not train on the record:
:func:`null_clients` draws ``m`` of them per record (seeded by the run's seed and the round, without
replacement, never the source), and each client's shard job computes the record's phi under its model (a
forward pass). That is ``m`` forward passes per audited record and round, whatever the number of clients; the
population sample, which is scored under every client's model anyway, takes its null values from those scores
(:func:`null_positions`, ``m`` other audited clients per record and candidate client). Nothing shaped records x
clients is built.
"""

from __future__ import annotations

import numpy as np

_NULL = 17   # stream tag of the draws (see fedaudit.auditor.records)


def _rng(seed: int, round_: int, salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 4, _NULL, int(round_), int(salt)]))


def draw_others(source_pos: np.ndarray, k: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """(len(source_pos), min(m, k - 1)) distinct positions in [0, k) per row, none equal to the row's
    ``source_pos`` (Floyd's sampling, vectorised over rows: O(rows * m^2))."""
    source_pos = np.asarray(source_pos, dtype=np.int64)
    n = source_pos.size
    m = int(max(0, min(m, k - 1)))
    picks = np.empty((n, m), dtype=np.int64)
    pool = k - 1                                   # positions other than the source, relabelled 0..k-2
    for c, j in enumerate(range(pool - m, pool)):
        t = rng.integers(0, j + 1, size=n)
        taken = (picks[:, :c] == t[:, None]).any(axis=1) if c else np.zeros(n, dtype=bool)
        picks[:, c] = np.where(taken, j, t)
    return picks + (picks >= source_pos[:, None])  # back to positions among all k, skipping the source


def null_clients(source: np.ndarray, clients, m: int, seed: int, round_: int) -> np.ndarray:
    """(n, min(m, replying - 1)) client ids: the other clients whose models score each record as its null;
    -1 rows for records with no source this round."""
    clients = np.asarray(sorted(int(k) for k in clients), dtype=np.int64)
    source = np.asarray(source, dtype=np.int64)
    width = int(max(0, min(m, clients.size - 1)))
    out = np.full((source.size, width), -1, dtype=np.int64)
    ok = np.isin(source, clients)
    if width == 0 or not ok.any():
        return out
    pos = np.searchsorted(clients, source[ok])
    out[ok] = clients[draw_others(pos, clients.size, width, _rng(seed, round_, 0))]
    return out


def rows_by_client(null: np.ndarray, clients) -> dict:
    """{client: (record positions, null slot)} of the records whose null includes that client."""
    rows, slots = np.nonzero(null >= 0)
    ks = null[rows, slots]
    order = np.argsort(ks, kind="stable")
    rows, slots, ks = rows[order], slots[order], ks[order]
    out = {}
    for k in clients:
        lo, hi = np.searchsorted(ks, k, side="left"), np.searchsorted(ks, k, side="right")
        out[int(k)] = (rows[lo:hi], slots[lo:hi])
    return out


def null_positions(n_clients: int, n_records: int, m: int, seed: int, round_: int) -> np.ndarray:
    """(n_clients, n_records, min(m, n_clients - 1)) positions among the audited clients: the null of
    population-sample record p when client j is its candidate."""
    width = int(max(0, min(m, n_clients - 1)))
    if width == 0:
        return np.zeros((n_clients, n_records, 0), dtype=np.int64)
    src = np.repeat(np.arange(n_clients), n_records)
    picks = draw_others(src, n_clients, width, _rng(seed, round_, 1))
    return picks.reshape(n_clients, n_records, width)


def phi_from_loss(loss: np.ndarray) -> np.ndarray:
    """phi = log(p / (1 - p)) of the true class from the cross-entropy loss -log p (exact inverse of
    softplus(-phi))."""
    loss = np.maximum(np.asarray(loss, dtype=np.float64), 1e-300)
    return -np.log(np.expm1(loss))


def phi_logits(phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-class logits and labels whose phi is exactly ``phi`` (for score attacks that read logits)."""
    phi = np.asarray(phi, dtype=np.float64)
    return np.c_[np.zeros(phi.size), phi], np.ones(phi.size, dtype=np.int64)
