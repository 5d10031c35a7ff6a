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
                             source_features: np.ndarray, seed: int = 0, negatives: int = 8) -> np.ndarray:
    """(S, K) source scores of the source sample under each of K client models (higher: more likely the source).

    Every feature of a record under client k's model (loss, loss drop from theta_prev, gradient norms, the
    gradient-update cosine of every layer, ...) is standardised by the population sample's values under the same
    model (``pop_features`` (K, P, F)): clients differ in how far their models moved. A logistic regression on
    these rows, fitted on the known members of the source sample (their row under their own client's model
    against their rows under up to ``negatives`` other clients'), scores every row; it is cross-fitted like the
    membership attacks (a record of fold f is scored by the regression fitted outside fold f), so no record is
    scored with its own owner known. ``owner_col`` (S,): the column of each record's owner (-1: its owner is not
    among the K). A fold without known members to fit on falls back to the standardised log loss. Work: linear in
    (S + P) x K."""
    from fedaudit.auditor.attack import Logistic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN columns (no theta_prev): left NaN
        mu, sd = np.nanmean(pop_features, axis=1), np.nanstd(pop_features, axis=1)         # (K, F)
    sd = np.where(sd > 1e-12, sd, np.nan)
    z = (np.swapaxes(source_features, 0, 1).astype(np.float64) - mu[None]) / sd[None]     # (S, K, F)
    z = np.clip(np.where(np.isfinite(z), z, np.nan), -1e3, 1e3)
    usable = ~np.isnan(z).all(axis=(0, 1))
    z = z[:, :, usable]
    S, K = z.shape[:2]
    names = np.arange(usable.size)[usable]
    fallback = -z[:, :, list(names).index(1)] if 1 in names else np.zeros((S, K))      # column 1: log_loss
    fold = records.fold[records.source_sample]
    known = records.known[records.source_sample] & (owner_col >= 0)
    rng = np.random.default_rng([int(seed), 0x50])
    out = np.full((S, K), np.nan)
    for f in np.unique(fold):
        target = fold == f
        train = np.flatnonzero(known & ~target)
        if not train.size or K < 2 or not z.shape[2]:
            out[target] = fallback[target]
            continue
        rows, labels = [], []
        for i in train:
            others = np.delete(np.arange(K), owner_col[i])
            pick = rng.choice(others, size=min(negatives, others.size), replace=False)
            rows += [z[i, owner_col[i]], *z[i, pick]]
            labels += [1.0] + [0.0] * pick.size
        clf = Logistic().fit(np.asarray(rows), np.asarray(labels))
        out[target] = clf.decision_function(z[target].reshape(-1, z.shape[2])).reshape(-1, K)
    return out


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
           "source_inference"]
