"""Source inference (Hu et al. 2021): which client holds a member, from its losses under the clients' models.

NumPy only; the per-round audit and the aggregation across rounds both call it.
"""

from __future__ import annotations

import numpy as np


def attribute_sources(loss: np.ndarray, owner: np.ndarray, clients) -> dict:
    """Attribute every member whose owner replied to the client whose model gives it the lowest loss.

    ``loss``: (n, len(clients)), column j the losses under ``clients[j]``'s model (NaN: no score). Returns
    accuracy, chance (1/replying clients) and the number of members attributed.
    """
    clients = np.asarray(list(clients), dtype=np.int64)
    sel = (owner >= 0) & np.isin(owner, clients)
    if not sel.any() or not clients.size:
        return {"accuracy": None, "chance": (1.0 / clients.size) if clients.size else None, "records": 0}
    l = np.where(np.isnan(loss[sel]), np.inf, loss[sel])
    attributed = clients[np.argmin(l, axis=1)]
    acc = float(np.mean(attributed == owner[sel]))
    return {"accuracy": acc, "chance": 1.0 / clients.size, "records": int(sel.sum())}


def source_inference(loss: np.ndarray, owner: np.ndarray, clients) -> dict:
    """:func:`attribute_sources` for ``loss`` (n, K) whose column k is client k (NaN where it did not reply)."""
    clients = list(clients)
    return attribute_sources(loss[:, clients] if clients else loss[:, :0], owner, clients)


__all__ = ["attribute_sources", "source_inference"]
