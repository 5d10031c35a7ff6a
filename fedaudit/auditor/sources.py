"""Source inference (Hu et al. 2021): which client holds a member, from the server's signals under the clients'
models. The naive rule attributes a member to the client whose model gives it the lowest loss; the calibrated one
(:func:`calibrated_source_scores`) to the client under whose model a cross-fitted logistic regression on the
record's features, standardised per client on the population sample, scores it highest. Both are reported.

NumPy only; the per-round audit and the aggregation across rounds both call it.
"""

from __future__ import annotations

import warnings

import numpy as np

from fedaudit.auditor.records import AuditRecords


LOWEST_LOSS = "lowest loss: the client whose model gives the record the lowest loss (Hu et al. 2021)"
CALIBRATED = ("calibrated: the client under whose model a cross-fitted logistic regression on the record's features, "
              "standardised per client on the population sample, scores it highest")


def calibrated_source_scores(records: AuditRecords, owner_col: np.ndarray, pop_features: np.ndarray,
                             source_features: np.ndarray, seed: int = 0, negatives: int = 8,
                             overwrite: bool = False) -> np.ndarray:
    """(S, K) source scores of the source sample under each of K client models (higher: more likely the source).

    Every feature of a record under client k's model (loss, loss drop from theta_prev, gradient norms, the
    gradient-update cosine of every layer, ...) is standardised by the population sample's values under the same
    model (``pop_features`` (K, P, F)): clients differ in how far their models moved. A logistic regression on
    these rows, fitted on the known members of the source sample (their row under their own client's model
    against their rows under up to ``negatives`` other clients'), scores every row; it is cross-fitted like the
    membership attacks (a record of fold f is scored by the regression fitted outside fold f), so no record is
    scored with its own owner known. ``owner_col`` (S,): the column of each record's owner (-1: its owner is not
    among the K). A fold without known members to fit on falls back to the standardised log loss. Work: linear in
    (S + P) x K; memory: ``source_features`` (K, S, F) once more (none with ``overwrite``: the caller's float32
    array is standardised in place)."""
    from fedaudit.auditor.attack import Logistic

    z = standardise_source_features(pop_features, source_features, overwrite=overwrite)     # (K, S, F)
    K, S = z.shape[:2]
    usable = np.zeros(z.shape[2], dtype=bool)
    for start in range(0, K, _CHUNK):
        usable |= ~np.isnan(z[start:start + _CHUNK]).all(axis=(0, 1))
    cols = np.flatnonzero(usable)
    fallback = -z[:, :, 1].T if usable.size > 1 and usable[1] else np.zeros((S, K))      # column 1: log_loss
    fold = records.fold[records.source_sample]
    known = records.known[records.source_sample] & (owner_col >= 0)
    rng = np.random.default_rng([int(seed), 0x50])
    out = np.full((S, K), np.nan)
    for f in np.unique(fold):
        target = np.flatnonzero(fold == f)
        train = np.flatnonzero(known & (fold != f))
        if not train.size or K < 2 or not cols.size:
            out[target] = fallback[target]
            continue
        rows, labels = [], []
        for i in train:
            others = np.delete(np.arange(K), owner_col[i])
            pick = rng.choice(others, size=min(negatives, others.size), replace=False)
            rows += [z[owner_col[i], i, cols], *z[pick, i][:, cols]]
            labels += [1.0] + [0.0] * pick.size
        clf = Logistic().fit(np.asarray(rows), np.asarray(labels))
        for start in range(0, K, _CHUNK):          # a chunk of clients at a time: float64 copies stay small
            block = z[start:start + _CHUNK][:, target][:, :, cols]
            out[target, start:start + _CHUNK] = clf.decision_function(
                block.reshape(-1, cols.size)).reshape(block.shape[:2]).T
    return out


_CHUNK = 64     # clients per block of the source calibration's float64 work


def standardise_source_features(pop_features: np.ndarray, source_features: np.ndarray, *,
                                overwrite: bool = False) -> np.ndarray:
    """(K, S, F) float32: the source sample's features under each client's model (``source_features`` (K, S, F)),
    standardised by the population sample's under the same model (``pop_features`` (K, P, F)); NaN where a
    column has no spread or no value, clipped to +-1e3. A chunk of clients at a time in float64, written into
    ``source_features`` itself with ``overwrite`` (a float32 array): a round with a thousand clients holds one
    chunk beside its arrays, not several float64 copies of them."""
    K = source_features.shape[0]
    z = source_features if overwrite and source_features.dtype == np.float32 else \
        np.empty(source_features.shape, dtype=np.float32)
    for start in range(0, K, _CHUNK):
        part = slice(start, min(K, start + _CHUNK))
        pop = pop_features[part].astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN columns (no theta_prev): left NaN
            mu, sd = np.nanmean(pop, axis=1), np.nanstd(pop, axis=1)         # (chunk, F)
        sd = np.where(sd > 1e-12, sd, np.nan)
        block = (source_features[part].astype(np.float64) - mu[:, None]) / sd[:, None]
        block[~np.isfinite(block)] = np.nan
        z[part] = np.clip(block, -1e3, 1e3)
    return z


def attribution_accuracy(correct: np.ndarray) -> dict:
    """Accuracy of ``correct`` (bool per attributed record) with its 95% Clopper-Pearson interval."""
    from fedaudit.metrics import clopper_pearson

    n, k = int(correct.size), int(np.sum(correct))
    if not n:
        return {"accuracy": None, "ci": [None, None]}
    return {"accuracy": k / n, "ci": [float(v) for v in clopper_pearson(k, n)]}


def attribute_sources(loss: np.ndarray, owner: np.ndarray, clients, score: np.ndarray | None = None) -> dict:
    """Attribute every member whose owner replied to a client.

    ``loss``: (n, len(clients)), column j the losses under ``clients[j]``'s model (NaN: no score); ``score``
    (same shape, higher: more likely the source), e.g. :func:`calibrated_source_scores`. The attribution is the
    highest score when ``score`` is given, else the lowest loss; the lowest-loss attribution is always reported
    as ``lowest_loss``, the naive baseline. Returns accuracy with its 95% interval, chance (1/replying clients)
    and the number of members attributed.
    """
    clients = np.asarray(list(clients), dtype=np.int64)
    sel = (owner >= 0) & np.isin(owner, clients)
    chance = (1.0 / clients.size) if clients.size else None
    if not sel.any() or not clients.size:
        out = {"accuracy": None, "ci": [None, None], "chance": chance, "records": 0}
        return {**out, "method": LOWEST_LOSS} if score is None else \
            {**out, "method": CALIBRATED, "lowest_loss": {"accuracy": None, "ci": [None, None]}}
    l = np.where(np.isnan(loss[sel]), np.inf, loss[sel])
    naive = attribution_accuracy(clients[np.argmin(l, axis=1)] == owner[sel])
    if score is None:
        return {**naive, "chance": chance, "records": int(sel.sum()), "method": LOWEST_LOSS}
    s = np.where(np.isnan(score[sel]), -np.inf, score[sel])
    return {**attribution_accuracy(clients[np.argmax(s, axis=1)] == owner[sel]), "chance": chance,
            "records": int(sel.sum()), "method": CALIBRATED, "lowest_loss": naive}


def source_inference(loss: np.ndarray, owner: np.ndarray, clients, score: np.ndarray | None = None) -> dict:
    """:func:`attribute_sources` for ``loss`` (n, K) (and ``score``) whose column k is client k (NaN where it did
    not reply)."""
    clients = list(clients)
    return attribute_sources(loss[:, clients] if clients else loss[:, :0], owner, clients,
                             None if score is None else score[:, clients])


__all__ = ["CALIBRATED", "LOWEST_LOSS", "attribute_sources", "attribution_accuracy", "calibrated_source_scores",
           "source_inference", "standardise_source_features"]
