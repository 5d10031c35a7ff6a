"""Plots of attack results, drawn with matplotlib's Agg canvas (no pyplot state, no TensorFlow).

Shared by the single-model audits (:mod:`fedaudit.attacks.whitebox`, ``fedaudit audit-model``) and the HTML reports,
so it sits outside :mod:`fedaudit.report`: the attacks import it without importing the report. Every
function writes one PNG atomically (temporary name, then rename) and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MEMBER_COLOR = "#1f4e9c"
NONMEMBER_COLOR = "#8ec5ff"
MEMBER_LABEL = "Training data (members)"
NONMEMBER_LABEL = "Population data (non-members)"


def _figure(size=(6.4, 4.8)) -> Figure:
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.14, right=0.96, top=0.92, bottom=0.11)  # fixed margins: tight_layout is slow
    return fig


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` to ``path`` (PNG) atomically, creating the folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(temporary, format="png")
    os.replace(temporary, path)
    return path


def _weights(values: np.ndarray) -> np.ndarray:
    return np.full(len(values), 1.0 / max(len(values), 1))


def plot_probability_histogram(member, nonmember, path, title: str = "Privacy risk",
                               xlabel: str = "Membership probability", bins: int = 20,
                               value_range=(0.0, 1.0)) -> Path:
    """Histogram (fraction of records per bin) of members' and non-members' scores, overlaid."""
    member = np.asarray(member, dtype=np.float64).ravel()
    nonmember = np.asarray(nonmember, dtype=np.float64).ravel()
    if value_range is None:
        both = np.concatenate([member, nonmember])
        both = both[np.isfinite(both)]
        value_range = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    fig = _figure()
    ax = fig.add_subplot()
    for values, color, label in ((member, MEMBER_COLOR, MEMBER_LABEL), (nonmember, NONMEMBER_COLOR, NONMEMBER_LABEL)):
        if values.size:
            ax.hist(np.clip(values, *value_range), bins=bins, range=value_range, weights=_weights(values),
                    color=color, alpha=0.7, label=f"{label}, n={values.size}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Fraction of records")
    ax.set_title(title)
    ax.legend(loc="best", framealpha=0.8)
    return save_figure(fig, path)


def _curve_of(item) -> tuple[np.ndarray, np.ndarray, float]:
    """(fpr, tpr, auc) from a metrics Summary, an (fpr, tpr) pair or (fpr, tpr, auc)."""
    if hasattr(item, "roc") and hasattr(item, "auc"):
        fpr, tpr = item.roc
        return np.asarray(fpr, float), np.asarray(tpr, float), float(item.auc)
    if isinstance(item, Mapping) and "fpr" in item:
        fpr, tpr = np.asarray(item["fpr"], float), np.asarray(item["tpr"], float)
        auc = item.get("auc")
    else:
        fpr, tpr = np.asarray(item[0], float), np.asarray(item[1], float)
        auc = item[2] if len(item) > 2 else None
    if auc is None:
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return fpr, tpr, float(auc)


def plot_roc(summaries_or_curves, path, log: bool = False, title: str | None = None) -> Path:
    """ROC curves with their AUC in the legend, on linear axes or log-log axes (``log=True``).

    ``summaries_or_curves``: one metrics Summary or (fpr, tpr) pair, or a mapping name -> those, or a
    list of them.
    """
    items = summaries_or_curves
    if isinstance(items, Mapping) and "fpr" not in items:
        named = list(items.items())
    elif hasattr(items, "roc") or (isinstance(items, tuple) and len(items) in (2, 3)
                                   and np.ndim(items[0]) == 1):
        named = [("attack", items)]
    elif isinstance(items, Sequence):
        named = [(f"attack {i + 1}", item) for i, item in enumerate(items)]
    else:
        named = [("attack", items)]
    fig = _figure()
    ax = fig.add_subplot()
    fprs = []
    for name, item in named:
        fpr, tpr, auc = _curve_of(item)
        ax.plot(fpr, tpr, label=f"{name} (AUC = {auc:.3f})")
        fprs.append(fpr)
    roc_axes(ax, fprs, log, color="k", ls="--", lw=0.8)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(title or ("ROC of the membership inference attack" + (" (log scale)" if log else "")))
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def roc_axes(ax, fprs, log: bool, **chance_style) -> None:
    """The chance diagonal and the axes of a ROC plot; on log axes, down to the smallest positive FPR drawn."""
    if log:
        positive = [float(f[f > 0].min()) for f in fprs if np.any(f > 0)]
        low = min(max(min(positive, default=1.0), 1e-5), 1e-2)
        grid = np.logspace(np.log10(low), 0, 100)
        ax.plot(grid, grid, label="chance", **chance_style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(low, 1.0)
        ax.set_ylim(low, 1.0)
    else:
        ax.plot([0, 1], [0, 1], label="chance", **chance_style)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)


def _means_by_label(labels: np.ndarray, values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return np.array([values[labels == k].mean() if np.any(labels == k) else np.nan for k in classes])


def plot_gradient_norms(member_labels, member_norms, nonmember_labels, nonmember_norms, path,
                        title: str = "Average gradient norm per label") -> Path:
    """Mean gradient norm per label, members vs non-members (all records given, all layers in the norm)."""
    ml, mn = np.asarray(member_labels).ravel(), np.asarray(member_norms, float).ravel()
    nl, nn = np.asarray(nonmember_labels).ravel(), np.asarray(nonmember_norms, float).ravel()
    classes = np.unique(np.concatenate([ml, nl]))
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(classes, _means_by_label(ml, mn, classes), "o", color="tab:green", label=f"{MEMBER_LABEL}, n={ml.size}")
    ax.plot(classes, _means_by_label(nl, nn, classes), "o", color="tab:red", label=f"{NONMEMBER_LABEL}, n={nl.size}")
    ax.set_xlabel("Label")
    ax.set_ylabel("Average gradient norm")
    if np.nanmin(np.r_[mn, nn, 1.0]) > 0 and np.nanmax(np.r_[mn, nn]) / max(np.nanmin(np.r_[mn, nn]), 1e-300) > 1e3:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(loc="best", framealpha=0.8)
    return save_figure(fig, path)


def plot_per_label_histograms(member_probs, member_labels, nonmember_probs, nonmember_labels, directory,
                              prefix: str = "privacy_risk_label") -> list[Path]:
    """One membership-probability histogram per label present: ``{directory}/{prefix}{k}.png``."""
    mp, ml = np.asarray(member_probs, float).ravel(), np.asarray(member_labels).ravel()
    npb, nl = np.asarray(nonmember_probs, float).ravel(), np.asarray(nonmember_labels).ravel()
    paths = []
    for k in np.unique(np.concatenate([ml, nl])):
        label = int(k) if float(k).is_integer() else k
        paths.append(plot_probability_histogram(mp[ml == k], npb[nl == k], Path(directory) / f"{prefix}{label}.png",
                                                title=f"Privacy risk - class {label}"))
    return paths


__all__ = ["plot_probability_histogram", "plot_roc", "plot_gradient_norms", "plot_per_label_histograms",
           "save_figure"]
