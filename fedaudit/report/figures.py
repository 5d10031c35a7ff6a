"""The report's and the comparison's figures (matplotlib Agg canvas; no pyplot state, no TensorFlow).

The membership-probability histogram and the ROC curves come from :mod:`fedaudit.plots`; this
module adds the federated views: utility and risk over rounds, risk per client and per class, and the
overlays of a comparison. Every function writes one PNG atomically and returns its path, or returns None
when the run has nothing to draw (the HTML then says what is missing).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedaudit.metrics import roc_curve
from fedaudit import plots
from fedaudit.report.rundata import RunData, tm_color, tm_title

RISK_COLOR = "#6c3483"       # the aggregated membership probability (a threat model's colour is the registry's)
UTILITY_COLOR = "#1e8449"
CHANCE_STYLE = dict(color="0.45", ls="--", lw=0.9)
# Distinct colours for runs in a comparison (colour-blind-safe first).
RUN_COLORS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000",
              "#8c564b", "#7f7f7f", "#bcbd22", "#17becf"]
RUN_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]


def _figure(size=(7.0, 3.6)) -> Figure:
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    """Write ``fig`` to ``path`` (PNG) atomically; legends placed outside the axes are kept in the picture."""
    import os
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # tight_layout's "not compatible" notes on twin axes
        fig.tight_layout()
    fig.savefig(temporary, format="png", bbox_inches="tight", pad_inches=0.12)
    os.replace(temporary, path)
    return path


def _finite(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def _round_axis(ax, rounds) -> None:
    rounds = [int(r) for r in rounds if r is not None and np.isfinite(r)]
    if rounds and max(rounds) <= 30:
        ax.set_xticks(sorted(set(rounds)))
    ax.set_xlabel("Round")


# ----------------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------------


def plot_utility(run: RunData, path) -> Path | None:
    """Test accuracy (left axis) and test loss (right axis) of the global model per round."""
    rx, acc = _finite(*run.utility("model_accuracy"))
    lx, loss = _finite(*run.utility("loss"))
    if not rx.size and not lx.size:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    if rx.size:
        ax.plot(rx, acc, "o-", color=UTILITY_COLOR, label="test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Test accuracy", color=UTILITY_COLOR)
    handles, labels = ax.get_legend_handles_labels()
    if lx.size:
        ax2 = ax.twinx()
        ax2.plot(lx, loss, "s--", color="0.35", label="test loss")
        ax2.set_ylabel("Test loss")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    _round_axis(ax, np.r_[rx, lx])
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    ax.set_title("Utility of the global model per round")
    return _save(fig, path)


def plot_risk_over_rounds(run: RunData, path) -> Path | None:
    """Per threat model: AUC per round (left), TPR at 1% and 0.1% FPR per round with 95% intervals (right)."""
    tms = [tm for tm in run.threat_models() if np.isfinite(run.per_round(tm, "auc")[1]).any()]
    if not tms:
        return None
    fig = _figure((10.0, 3.8))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    all_rounds = []
    for tm in tms:
        color = tm_color(tm)
        x, y = _finite(*run.per_round(tm, "auc"))
        all_rounds += list(x)
        ax1.plot(x, y, "o-", color=color, label=tm_title(tm))
        for key, style, name in (("tpr_at_1pct", "o-", "1% FPR"), ("tpr_at_0_1pct", "^--", "0.1% FPR")):
            x2, y2 = _finite(*run.per_round(tm, key))
            if not x2.size:
                continue
            ax2.plot(x2, 100 * y2, style, color=color, label=f"{tm_title(tm)}, {name}")
            cx, lo, hi = run.per_round_ci(tm, key)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.sum() >= 1:
                ax2.fill_between(cx[ok], 100 * lo[ok], 100 * hi[ok], color=color, alpha=0.12, lw=0)
    ax1.axhline(0.5, **CHANCE_STYLE, label="chance (0.5)")
    ax1.set_ylabel("Attack AUC")
    lo_auc = min([0.45] + [float(np.nanmin(run.per_round(tm, "auc")[1])) - 0.03 for tm in tms
                           if np.isfinite(run.per_round(tm, "auc")[1]).any()])
    ax1.set_ylim(max(0.0, lo_auc), 1.0)
    ax1.set_title("How well members are recognised (AUC)")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.grid(alpha=0.3)
    _round_axis(ax1, all_rounds)
    ax2.axhline(1.0, **CHANCE_STYLE, label="chance at 1% FPR")
    ax2.set_ylabel("Members identified (TPR, %)")
    ax2.set_ylim(bottom=0)
    ax2.set_title("Members identified at a low false-alarm rate")
    ax2.legend(loc="upper left", fontsize=7)
    ax2.grid(alpha=0.3)
    _round_axis(ax2, all_rounds)
    return _save(fig, path)


def client_table(run: RunData) -> dict | None:
    """clients.csv as columns, or the last audited round's per-client results (of the threat model that observes
    each client's own model) in the same shape."""
    if run.clients is not None and "client" in run.clients and len(run.clients["client"]):
        return run.clients
    tm = run.per_client_threat_model()
    for round_, view in reversed(run.views(tm) if tm else []):
        if view.clients:
            cols = {"client": np.array([float(c.client) for c in view.clients])}
            cols.update({k: np.array([_num(getattr(c, k)) for c in view.clients])
                         for k in ("records", "auc", "tpr_at_0_1pct", "tpr_at_1pct")})
            cols["peak_round"] = np.full(len(view.clients), float(round_))
            return cols
    return None


def _num(v) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _risk_colors(values, low=0.5, high=0.85):
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn_r"]
    v = np.clip((np.nan_to_num(np.asarray(values, float), nan=low) - low) / (high - low), 0, 1)
    return [cmap(0.1 + 0.8 * x) for x in v]


def plot_clients(run: RunData, path) -> Path | None:
    """Per client (server view): bars of the attack's AUC on that client's records, labelled with counts."""
    table = client_table(run)
    if table is None or "auc" not in table or not np.isfinite(np.asarray(table["auc"], float)).any():
        return None
    clients = np.asarray(table["client"], float).astype(int)
    auc = np.asarray(table["auc"], float)
    records = np.asarray(table.get("records", np.full(clients.size, np.nan)), float)
    n = clients.size
    if n > MANY_CLIENTS:
        return _plot_client_distribution(auc, path)
    if n > 40:      # many clients: ranked from the most to the least exposed, so the spread reads at a glance
        order = np.argsort(-np.nan_to_num(auc, nan=-1.0), kind="mergesort")
        clients, auc, records = clients[order], auc[order], records[order]
    fig = _figure((max(6.0, min(16.0, 0.45 * n + 3)), 3.8))
    ax = fig.add_subplot()
    pos = np.arange(n)
    ax.bar(pos, np.nan_to_num(auc - 0.5), bottom=0.5, color=_risk_colors(auc), edgecolor="0.3" if n <= 40 else "none",
           lw=0.5, width=0.8 if n <= 40 else 1.0)
    ax.axhline(0.5, **CHANCE_STYLE, label="chance (0.5)")
    if n <= 40:
        for p, a, r in zip(pos, auc, records):
            if np.isfinite(a):
                ax.text(p, max(a, 0.5) + 0.01, f"{a:.2f}" + (f"\n{int(r)} rec." if np.isfinite(r) and n <= 20 else ""),
                        ha="center", va="bottom", fontsize=7)
        ax.set_xticks(pos)
        ax.set_xticklabels([str(c) for c in clients], fontsize=8)
    ax.set_xlabel("Client" if n <= 40 else f"{n} clients, ranked by AUC")
    ax.set_ylabel("Attack AUC on the client's records")
    top = float(np.nanmax(auc)) if np.isfinite(auc).any() else 1.0
    ax.set_ylim(min(0.45, float(np.nanmin(auc)) - 0.02), max(top + (0.12 if n <= 20 else 0.06), 0.6))
    ax.set_yticks([t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= 1.0 + 1e-9])
    ax.set_title("Risk per client: the server attacking each client's update")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


#: more clients than this: the per-client figure is a distribution, the table and the heat map the most exposed
MANY_CLIENTS = 200
MOST_EXPOSED = 40


def _plot_client_distribution(auc: np.ndarray, path) -> Path | None:
    """Many clients: a histogram of the per-client AUC with its median and 95th percentile (no bar per client)."""
    values = auc[np.isfinite(auc)]
    fig = _figure((7.0, 3.6))
    ax = fig.add_subplot()
    low, high = min(0.4, float(values.min())), max(1.0, float(values.max()))
    ax.hist(values, bins=np.linspace(low, high, 41), color="#b03a2e", alpha=0.75, edgecolor="white", lw=0.3)
    ax.axvline(0.5, **CHANCE_STYLE, label="chance (0.5)")
    for q, style in ((50, "-"), (95, "--")):
        v = float(np.percentile(values, q))
        ax.axvline(v, color="0.2", ls=style, lw=1.0, label=f"{'median' if q == 50 else '95th percentile'} {v:.2f}")
    ax.set_xlabel("Attack AUC on a client's records")
    ax.set_ylabel("Clients")
    ax.set_title(f"Risk per client: the distribution over {values.size:,} clients")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_client_rounds(run: RunData, path) -> Path | None:
    """Heat map of the attack's AUC per client (rows) and round (columns), of the threat model that observes each
    client's own model; with more than :data:`MOST_EXPOSED` clients, the most exposed of them (highest AUC in any
    round)."""
    rounds, clients, matrix = run.client_rounds(None, "auc")
    if not clients or not np.isfinite(matrix).any() or len(rounds) < 2:
        return None
    total = len(clients)
    if total > MOST_EXPOSED:
        peak = np.nanmax(np.where(np.isfinite(matrix), matrix, -np.inf), axis=1)
        keep = np.sort(np.argsort(-peak, kind="mergesort")[:MOST_EXPOSED])
        clients, matrix = [clients[i] for i in keep], matrix[keep]
    fig = _figure((max(5.0, min(12.0, 0.5 * len(rounds) + 3)), max(2.6, min(12.0, 0.28 * len(clients) + 1.5))))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, aspect="auto", cmap="RdYlGn_r", vmin=0.5, vmax=max(0.85, float(np.nanmax(matrix))),
                   interpolation="nearest")
    ax.set_xticks(range(len(rounds)))
    ax.set_xticklabels([str(r) for r in rounds], fontsize=8)
    if len(clients) <= 40:
        ax.set_yticks(range(len(clients)))
        ax.set_yticklabels([str(c) for c in clients], fontsize=7)
    ax.set_xlabel("Round")
    ax.set_ylabel("Client")
    fig.colorbar(im, ax=ax, label="AUC")
    ax.set_title(f"Risk per client and round ({run.per_client_threat_model()} view)" if total <= MOST_EXPOSED else
                 f"The {len(clients)} most exposed of {total:,} clients, per round ({run.per_client_threat_model()} view)")
    return _save(fig, path)


def class_results(run: RunData, tm: str) -> dict | None:
    """Per class: {"classes", "auc", "tpr_at_1pct", "n_members", "n_nonmembers"} for a threat model.

    From summary.json's slices when the auditor wrote them, else computed from records.csv's scores.
    """
    slices = run.summary.slices.get(tm) if isinstance(run.summary.slices, dict) else None
    rows = []
    if isinstance(slices, list):
        for s in slices:
            if isinstance(s, dict) and s.get("feature") == "class":
                summ = s.get("summary") or {}
                rows.append((s.get("value"), _num(summ.get("auc")), _num(summ.get("tpr_at_1pct")),
                             s.get("n_members", 0), s.get("n_nonmembers", 0)))
    if not rows and run.records is not None and tm in run.records and "label" in run.records:
        from fedaudit.metrics import auc as auc_of
        from fedaudit.metrics import summarize

        from fedaudit.report.rundata import _as_float_array

        score = _as_float_array(run.records[tm])
        member = _as_float_array(run.records["member"])
        label = _as_float_array(run.records["label"])
        ok = np.isfinite(score) & np.isfinite(member) & np.isfinite(label)
        for c in np.unique(label[ok]):
            sel = ok & (label == c)
            m, n = score[sel & (member == 1)], score[sel & (member == 0)]
            if m.size and n.size:
                tpr = summarize(m, n).tpr_at_1pct if n.size >= 100 else math.nan
                rows.append((int(c), auc_of(m, n), tpr, int(m.size), int(n.size)))
    if not rows:
        return None
    rows.sort(key=lambda r: (r[0] is None, r[0]))
    return {"classes": [r[0] for r in rows], "auc": np.array([r[1] for r in rows], float),
            "tpr_at_1pct": np.array([r[2] for r in rows], float),
            "n_members": [int(r[3] or 0) for r in rows], "n_nonmembers": [int(r[4] or 0) for r in rows]}


def plot_classes(run: RunData, path) -> Path | None:
    """Grouped bars: the attack's AUC on each class's records, one bar per threat model."""
    per_tm = {tm: class_results(run, tm) for tm in run.threat_models()}
    per_tm = {tm: r for tm, r in per_tm.items() if r is not None and np.isfinite(r["auc"]).any()}
    if not per_tm:
        return None
    classes = sorted({c for r in per_tm.values() for c in r["classes"]}, key=lambda c: (c is None, c))
    fig = _figure((max(6.0, min(16.0, 0.5 * len(classes) * len(per_tm) + 3)), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(per_tm)
    lows = []
    for i, (tm, r) in enumerate(per_tm.items()):
        lookup = dict(zip(r["classes"], r["auc"]))
        vals = np.array([lookup.get(c, np.nan) for c in classes], float)
        lows.append(np.nanmin(vals))
        ax.bar(np.arange(len(classes)) + (i - (len(per_tm) - 1) / 2) * width, np.nan_to_num(vals - 0.5),
               bottom=0.5, width=width, color=tm_color(tm), label=tm_title(tm), edgecolor="0.3", lw=0.4)
    ax.axhline(0.5, **CHANCE_STYLE, label="chance (0.5)")
    ax.set_xticks(np.arange(len(classes)))
    ax.set_xticklabels([str(c) for c in classes], fontsize=8)
    ax.set_xlabel("Class (label)")
    ax.set_ylabel("Attack AUC on the class's records")
    ax.set_ylim(min(0.45, float(np.nanmin(lows)) - 0.02), 1.0)
    ax.set_title("Risk per class")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def roc_curves(run: RunData) -> dict:
    """name -> (fpr, tpr, auc) for each audited threat model's scores (and the aggregated risk)."""
    curves = {}
    for tm in run.threat_models():
        sc = run.scores(tm)
        if sc is not None:
            fpr, tpr, _ = roc_curve(*sc)
            curves[tm_title(tm)] = _with_auc(fpr, tpr)
        else:
            summ, _ = run.headline(tm)
            roc = summ.extra.get("roc") if summ is not None else None
            if isinstance(roc, dict) and roc.get("fpr"):
                fpr = np.r_[0.0, np.asarray(roc["fpr"], float), 1.0]
                tpr = np.r_[0.0, np.asarray([_num(v) for v in roc["tpr"]], float), 1.0]
                ok = np.isfinite(tpr)
                curves[tm_title(tm)] = (fpr[ok], tpr[ok], _num(summ.value("auc")))
    probs = run.risk_probs()
    if probs is not None and len(curves) != 1:
        fpr, tpr, _ = roc_curve(*probs)
        curves["Membership probability (all views)"] = _with_auc(fpr, tpr)
    return curves


def _with_auc(fpr, tpr):
    fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def plot_run_rocs(run: RunData, directory) -> tuple[Path | None, Path | None]:
    curves = roc_curves(run)
    if not curves:
        return None, None
    directory = Path(directory)
    return (plots.plot_roc(curves, directory / "roc.png", title="ROC of the membership inference attacks"),
            plots.plot_roc(curves, directory / "roc_log.png", log=True,
                           title="ROC, log scale (the low false-alarm region)"))


def plot_histogram(run: RunData, path) -> Path | None:
    probs = run.risk_probs()
    if probs is None:
        return None
    return plots.plot_probability_histogram(probs[0], probs[1], path,
                                            title="Membership probability: members vs non-members")


# ----------------------------------------------------------------------------------------------------
# Comparison of runs
# ----------------------------------------------------------------------------------------------------


def plot_roc_overlay(runs: list[RunData], labels: list[str], tm: str, path, log: bool = False) -> Path | None:
    """One ROC curve per run for a threat model (the runs' colours as in every comparison figure)."""
    curves = []
    for i, (run, label) in enumerate(zip(runs, labels)):
        sc = run.scores(tm)
        if sc is not None:
            fpr, tpr, _ = roc_curve(*sc)
            curves.append((i, label, *_with_auc(fpr, tpr)))
    if not curves:
        return None
    fig = _figure((6.0, 4.6 + 0.22 * len(curves)))
    ax = fig.add_subplot()
    for i, label, fpr, tpr, auc in curves:
        ax.plot(fpr, tpr, color=RUN_COLORS[i % len(RUN_COLORS)], lw=1.6, label=f"{label} (AUC {auc:.3f})")
    plots.roc_axes(ax, [c[2] for c in curves], log, **CHANCE_STYLE)
    ax.set_xlabel("False positive rate (non-members wrongly flagged)")
    ax.set_ylabel("True positive rate (members identified)")
    ax.set_title(f"ROC, {tm_title(tm).lower()}" + (", log scale" if log else ""), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7, frameon=False)
    return _save(fig, path)


def plot_rounds_overlay(runs: list[RunData], labels: list[str], key: str, path, tms=None,
                        ylabel: str = "Attack AUC", title: str = "", percent: bool = False) -> Path | None:
    """One line per run and threat model of a per-round metric (``model_accuracy`` for utility: ``tms`` None)."""
    fig = _figure((8.5, 4.0))
    ax = fig.add_subplot()
    drew = False
    all_rounds = []
    for i, (run, label) in enumerate(zip(runs, labels)):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        if tms is None:
            x, y = _finite(*run.utility(key))
            if x.size:
                ax.plot(x, y, marker=RUN_MARKERS[i % len(RUN_MARKERS)], color=color, label=label)
                drew = True
                all_rounds += list(x)
            continue
        for tm, style in zip(tms, ("-", "--", ":")):
            x, y = _finite(*run.per_round(tm, key))
            if x.size:
                ax.plot(x, 100 * y if percent else y, style, marker=RUN_MARKERS[i % len(RUN_MARKERS)], color=color,
                        label=f"{label} ({tm})" if len(tms) > 1 else label)
                drew = True
                all_rounds += list(x)
    if not drew:
        return None
    if tms is not None and key == "auc":
        ax.axhline(0.5, **CHANCE_STYLE, label="chance")
    if key == "model_accuracy" and tms is None:
        ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)
    _round_axis(ax, all_rounds)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    return _save(fig, path)


def plot_privacy_utility(points: list[dict], path) -> Path | None:
    """Scatter of final test accuracy against the attack's AUC, one marker per run (and threat model).

    ``points``: {"label", "accuracy", "auc", "tm"}; the best corner (high accuracy, AUC 0.5) is marked.
    """
    pts = [p for p in points if np.isfinite(_num(p.get("accuracy"))) and np.isfinite(_num(p.get("auc")))]
    if not pts:
        return None
    fig = _figure((7.5, 4.8))
    ax = fig.add_subplot()
    labels = list(dict.fromkeys(p["label"] for p in pts))
    tms = list(dict.fromkeys(p["tm"] for p in pts))
    fills = {tm: ("full" if i == 0 else "none") for i, tm in enumerate(tms)}
    for p in pts:
        i = labels.index(p["label"])
        ax.plot(p["auc"], p["accuracy"], RUN_MARKERS[i % len(RUN_MARKERS)], color=RUN_COLORS[i % len(RUN_COLORS)],
                ms=10, fillstyle=fills[p["tm"]], mew=1.8)
    for i, label in enumerate(labels):
        ax.plot([], [], RUN_MARKERS[i % len(RUN_MARKERS)], color=RUN_COLORS[i % len(RUN_COLORS)], ms=8, label=label)
    for tm in tms:
        ax.plot([], [], "o", color="0.3", fillstyle=fills[tm], label=f"{'filled' if fills[tm] == 'full' else 'hollow'}: "
                f"{tm_title(tm).lower()}")
    aucs = [p["auc"] for p in pts]
    accs = [p["accuracy"] for p in pts]
    ax.set_xlim(min(0.48, min(aucs) - 0.02), max(aucs) + 0.05)
    ax.set_ylim(max(0.0, min(accs) - 0.08), min(1.05, max(accs) + 0.1))
    ax.axvline(0.5, **CHANCE_STYLE)
    ax.annotate("better: useful and private", xy=(0.02, 0.97), xycoords="axes fraction", ha="left", va="top",
                fontsize=8, color="0.3")
    ax.set_xlabel("Membership-inference AUC (lower is more private)")
    ax.set_ylabel("Final test accuracy (higher is more useful)")
    ax.set_title("Privacy-utility trade-off")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, ncol=2, frameon=False)
    return _save(fig, path)


def plot_epsilons(rows: list[dict], path) -> Path | None:
    """Bars per run: the accountant's epsilon (formal upper bound) beside the audit's empirical lower bound.

    ``rows``: {"label", "accountant": float|None (None: no DP, inf: no noise), "empirical": {tm: float}}.
    """
    rows = [r for r in rows if r.get("accountant") is not None or any(np.isfinite(_num(v))
                                                                       for v in r.get("empirical", {}).values())]
    if not rows:
        return None
    tms = list(dict.fromkeys(tm for r in rows for tm in r.get("empirical", {})))
    fig = _figure((8.5, 4.2))
    ax = fig.add_subplot()
    n = 1 + len(tms)
    width = 0.8 / n
    pos = np.arange(len(rows))
    finite_acc = [r["accountant"] for r in rows if r.get("accountant") is not None and math.isfinite(r["accountant"])]
    cap = max(finite_acc + [1.0]) * 1.15
    for j, r in enumerate(rows):
        a = r.get("accountant")
        x = pos[j] - 0.4 + width / 2
        if a is None:
            ax.text(x, 0.05, "no DP:\nno\nbound", ha="center", va="bottom", fontsize=6.5, color="0.3")
        elif not math.isfinite(a):
            ax.bar(x, cap, width=width, color="0.85", hatch="//", edgecolor="0.5")
            ax.text(x, cap * 0.5, "infinite", ha="center", fontsize=7, rotation=90)
        else:
            ax.bar(x, a, width=width, color="#7d3c98", edgecolor="0.3", lw=0.5)
            ax.text(x, a, f"{a:.3g}", ha="center", va="bottom", fontsize=7)
        for i, tm in enumerate(tms):
            e = _num(r.get("empirical", {}).get(tm))
            xe = x + (i + 1) * width
            if np.isfinite(e):
                ax.bar(xe, e, width=width, color=tm_color(tm) or "0.5", edgecolor="0.3", lw=0.5)
                ax.text(xe, e, f"{e:.2g}", ha="center", va="bottom", fontsize=7)
    from matplotlib.patches import Patch

    handles = [Patch(color="#7d3c98", label="accountant epsilon (formal upper bound)")]
    handles += [Patch(color=tm_color(tm) or "0.5", label=f"empirical epsilon, {tm_title(tm).lower()} (lower bound)")
                for tm in tms]
    ax.set_xticks(pos)
    ax.set_xticklabels([r["label"] for r in rows], fontsize=8, rotation=10)
    ax.set_yscale("symlog", linthresh=1.0, linscale=0.6)
    ax.set_ylabel("epsilon (log scale above 1)")
    ax.set_title("Formal privacy guarantee vs what the audit measured")
    ax.set_ylim(0, cap * 6)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=1, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


__all__ = [
    "plot_utility", "plot_risk_over_rounds", "plot_clients", "plot_client_rounds", "plot_classes",
    "plot_run_rocs", "plot_histogram", "plot_roc_overlay", "plot_rounds_overlay", "plot_privacy_utility",
    "plot_epsilons", "roc_curves", "class_results", "client_table", "tm_title", "RISK_COLOR", "RUN_COLORS",
]
