"""Attack metrics per slice of the records, as TensorFlow Privacy's membership-inference reports slice them.

Slices: the entire set, each class, each decile of the target's loss (deciles of members and
non-members pooled), and correctly versus incorrectly classified records. NumPy only.

Each entry: ``{"slice": "class=3", "feature": "class", "value": 3, "n_members": .., "n_nonmembers": ..,
"summary": Summary.to_dict() or None}``. A slice with no member or no non-member has no metrics
(``summary`` None and a ``note``); small slices have wide intervals and unmeasurable low FPRs, which
the summary says.
"""

from __future__ import annotations

import numpy as np

from fedaudit.errors import AttackError
from fedaudit.metrics import summarize


def _vector(values, name, n=None, dtype=np.float64):
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if n is not None and arr.size != n:
        raise AttackError(f"{name}: expected {n} values (one per record), got {arr.size}")
    return arr


def _entry(feature, value, label, sel_m, sel_n, ms, ns, delta, alpha):
    entry = {"slice": label, "feature": feature, "value": value,
             "n_members": int(sel_m.sum()), "n_nonmembers": int(sel_n.sum()), "summary": None}
    if entry["n_members"] and entry["n_nonmembers"]:
        entry["summary"] = summarize(ms[sel_m], ns[sel_n], delta=delta, alpha=alpha).to_dict()
    else:
        entry["note"] = "no members or no non-members in this slice"
    return entry


def slice_metrics(member_scores, nonmember_scores, member_labels, nonmember_labels, member_losses,
                  nonmember_losses, member_correct, nonmember_correct, *, deciles: int = 10,
                  delta: float = 1e-5, alpha: float = 0.05) -> list[dict]:
    """Metrics of one attack per slice: entire set, per class, per loss decile, by correctness."""
    ms = _vector(member_scores, "member_scores")
    ns = _vector(nonmember_scores, "nonmember_scores")
    if ms.size == 0 or ns.size == 0:
        raise AttackError("member_scores, nonmember_scores: slices need at least one member and one non-member")
    ml = _vector(member_labels, "member_labels", ms.size, np.int64)
    nl = _vector(nonmember_labels, "nonmember_labels", ns.size, np.int64)
    mloss = _vector(member_losses, "member_losses", ms.size)
    nloss = _vector(nonmember_losses, "nonmember_losses", ns.size)
    mc = _vector(member_correct, "member_correct", ms.size, bool)
    nc = _vector(nonmember_correct, "nonmember_correct", ns.size, bool)
    out = [_entry("all", None, "entire dataset", np.ones(ms.size, bool), np.ones(ns.size, bool), ms, ns, delta, alpha)]
    for c in np.unique(np.r_[ml, nl]):
        out.append(_entry("class", int(c), f"class={int(c)}", ml == c, nl == c, ms, ns, delta, alpha))
    deciles = int(deciles)
    if deciles < 1:
        raise AttackError(f"deciles: must be at least 1, got {deciles}")
    edges = np.quantile(np.r_[mloss, nloss], np.linspace(0.0, 1.0, deciles + 1))
    # bin k holds losses in [edges[k], edges[k+1]) (the last bin is closed); ties at an edge go up
    mbin = np.clip(np.searchsorted(edges, mloss, side="right") - 1, 0, deciles - 1)
    nbin = np.clip(np.searchsorted(edges, nloss, side="right") - 1, 0, deciles - 1)
    for k in range(deciles):
        label = f"loss_decile={k + 1} [{edges[k]:.4g}, {edges[k + 1]:.4g}{']' if k == deciles - 1 else ')'}"
        out.append(_entry("loss_decile", k + 1, label, mbin == k, nbin == k, ms, ns, delta, alpha))
    for value, label in ((True, "correctly classified"), (False, "misclassified")):
        out.append(_entry("correct", value, label, mc == value, nc == value, ms, ns, delta, alpha))
    return out


__all__ = ["slice_metrics"]
