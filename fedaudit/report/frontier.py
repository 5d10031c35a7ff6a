"""``frontier.html``: risk against accuracy for every run of a frontier search, the Pareto front, and in words the
cheapest configuration that meets the risk target (or that none does), with the accountant's and the measured
epsilons beside it. Written from ``frontier.json``'s result alone (:mod:`fedaudit.frontier`)."""

from __future__ import annotations

import math
from pathlib import Path

from fedaudit.plots import _figure, save_figure
from fedaudit.report.fmt import eps, esc, f3, num, pct
from fedaudit.report.html import figure, page, section, table, toc
from fedaudit.rundir import atomic_write_text

USEFUL_SHARE = 0.5     # below this share of the undefended accuracy, the verdict says the model is (nearly) useless
PERCENT_METRICS = ("tpr_at_1pct", "tpr_at_0_1pct", "accuracy")
METRIC_TEXT = {"auc": "AUC", "tpr_at_1pct": "share of members identified at 1% FPR",
               "tpr_at_0_1pct": "share of members identified at 0.1% FPR", "attack_accuracy": "attack accuracy",
               "epsilon_lower": "measured epsilon (95% lower bound)", "accountant_epsilon": "the accountant's epsilon"}


def _metric_value(metric: str, v) -> str:
    v = num(v)
    if math.isinf(v):
        return "infinite"
    if metric in PERCENT_METRICS:
        return pct(v)
    return eps(v) if "epsilon" in metric else f3(v)


def _with_ci(metric: str, stat: dict) -> str:
    if not stat or stat.get("mean") is None:
        return '<span class="na">n/a</span>'
    text = _metric_value(metric, stat["mean"])
    ci = stat.get("ci")
    if ci:
        text += f' <span class="ci">[{_metric_value(metric, ci[0])}, {_metric_value(metric, ci[1])}]</span>'
    return text


def _target_phrase(t: dict) -> str:
    who = f"the {t['threat_model']}'s " if t.get("threat_model") else ""
    what = METRIC_TEXT.get(t["metric"], t["metric"])
    return f"{who}{what} {'at most' if t['op'] == '<=' else 'below'} {_metric_value(t['metric'], t['value'])}"


def _measured_phrase(t: dict, value) -> str:
    who = f"the {t['threat_model']}'s " if t.get("threat_model") else "the "
    return f"{who}{METRIC_TEXT.get(t['metric'], t['metric'])} is {_metric_value(t['metric'], value)}"


def _epsilons(p: dict) -> str:
    acc = p.get("accountant_epsilon")
    parts = [f"Accountant &epsilon; = {eps(acc)}" if acc is not None else "No accountant guarantee (no DP)"]
    for tm, r in p["risk"].items():
        e = (r.get("epsilon_lower") or {}).get("mean")
        if e is not None:
            parts.append(f"{esc(tm)}'s attack measured &epsilon; &ge; {eps(e)}")
    return "; ".join(parts)


def verdict(result: dict) -> list[str]:
    """The paragraphs that answer the question: what meets the target, at what cost."""
    points = {p["label"]: p for p in result["points"]}
    t = result["target"]
    base = points.get(result.get("baseline"))
    out = []
    seeds = f"{result['repeats']} seed{'s' if result['repeats'] != 1 else ''} each"
    if base is not None:
        out.append(f"Without a defence, {esc(_measured_phrase(t, base['target_value']))} "
                   f"(target: {esc(t['text'])}), with {pct(base['accuracy']['mean'])} test accuracy; the target is "
                   + ("already met." if base["meets"] else "not met."))
    best = points.get(result.get("cheapest"))
    if best is None:
        out.append(f"<strong>No configuration tried meets the target</strong> ({esc(_target_phrase(t))}; "
                   f"{len(points)} configurations, {seeds}). Stronger settings, another defence or a combination "
                   "would be needed; the table shows how close each came.")
    else:
        cost = (base["accuracy"]["mean"] - best["accuracy"]["mean"]) if base and base["accuracy"]["mean"] is not None \
            else math.nan
        every = ("in every seed" if best["meets_every_seed"] else
                 "on average over the seeds, though not in every seed")
        out.append(f"<strong>The cheapest configuration that meets the target is {esc(best['label'])}</strong>: "
                   f"{esc(_measured_phrase(t, best['target_value']))} ({every}), at "
                   f"{pct(best['accuracy']['mean'])} test accuracy"
                   + (f", {pct(abs(cost))} {'below' if cost >= 0 else 'above'} the undefended federation"
                      if math.isfinite(cost) else "") + f". {_epsilons(best)}.")
        if math.isfinite(cost) and best["accuracy"]["mean"] < USEFUL_SHARE * base["accuracy"]["mean"]:
            out.append("<strong>At that strength the model keeps less than half of its undefended accuracy</strong>: "
                       "the target is met by making the model (nearly) useless. A weaker target, another defence or "
                       "a different training setup (more records per client, fewer local epochs) may be needed to "
                       "keep both.")
    if result.get("uncovered"):
        out.append("Not searched in depth (only their strongest setting ran): "
                   f"{esc(', '.join(result['uncovered']))}, whose guarantee does not cover the "
                   f"{esc(t.get('threat_model') or 'target')}: central DP's noise is added after the server has seen "
                   "each client's update.")
    out.append(f"The configurations ran with {seeds}; intervals are 95% t intervals over the seeds (with one seed, the "
               "run's own Clopper-Pearson interval). A configuration meets the target when the mean over its seeds "
               "does. These are the attacks this audit ran: a stronger attacker may do better, so the risk figures are "
               "lower bounds and a configuration that meets the target only narrowly deserves a margin.")
    return out


def draw_frontier(result: dict, path: Path) -> Path | None:
    """Risk (the target's metric) against accuracy: every configuration, the Pareto front, the target line."""
    pts = [p for p in result["points"] if p["accuracy"]["mean"] is not None and math.isfinite(num(p["target_value"]))]
    if not pts:
        return None
    fig = _figure((7.2, 4.8))
    ax = fig.add_subplot(111)
    defences = sorted({p["defence"] for p in pts})
    colors = dict(zip(defences, ["#7f8c8d", "#1f4e9c", "#c0392b", "#27ae60", "#8e44ad", "#e67e22", "#16a085"]))
    for d in defences:
        sub = [p for p in pts if p["defence"] == d]
        ax.scatter([p["accuracy"]["mean"] for p in sub], [p["target_value"] for p in sub], label=d,
                   color=colors.get(d, "#34495e"), s=36, zorder=3)
    front = [p for lab in result["pareto"] for p in pts if p["label"] == lab]
    front.sort(key=lambda p: p["accuracy"]["mean"])
    if len(front) > 1:
        ax.plot([p["accuracy"]["mean"] for p in front], [p["target_value"] for p in front], color="#34495e",
                lw=1, ls="--", label="Pareto front", zorder=2)
    t = result["target"]
    ax.axhline(t["value"], color="#c0392b", lw=1, ls=":", label=f"target {t['text']}")
    ax.set_xlabel("test accuracy")
    ax.set_ylabel(t["text"].split(t["op"])[0].strip())
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _rows(result: dict) -> tuple[list[str], list[list[str]]]:
    points = result["points"]
    tms = sorted({tm for p in points for tm in p["risk"]})
    front = set(result["pareto"])
    header = (["Configuration", "Runs", "Test accuracy"] + [f"{esc(tm)}: AUC" for tm in tms]
              + [f"{esc(tm)}: TPR at 1% FPR" for tm in tms] + [f"{esc(tm)}: measured &epsilon; &ge;" for tm in tms]
              + ["Accountant &epsilon;", "Meets target", "Pareto"])
    rows = []
    for p in sorted(points, key=lambda p: -(p["accuracy"]["mean"] or 0)):
        name = esc(p["label"]) + (" <strong>(cheapest)</strong>" if p["label"] == result.get("cheapest") else "")
        acc = p.get("accountant_epsilon")
        rows.append([name, esc(p["runs"]), _with_ci("accuracy", p["accuracy"])]
                    + [_with_ci("auc", p["risk"][tm].get("auc")) for tm in tms]
                    + [_with_ci("tpr_at_1pct", p["risk"][tm].get("tpr_at_1pct")) for tm in tms]
                    + [_with_ci("epsilon_lower", p["risk"][tm].get("epsilon_lower")) for tm in tms]
                    + [eps(acc) if acc is not None else '<span class="na">none</span>',
                       ("yes" if p["meets_every_seed"] else "on average") if p["meets"] else "no",
                       "yes" if p["label"] in front else ""])
    return header, rows


def render_frontier(result: dict, plot: Path | None) -> str:
    header, rows = _rows(result)
    body = toc([("verdict", "Verdict"), ("frontier", "Risk against accuracy"), ("configurations", "Every configuration")])
    body += section("verdict", "What meets the target, at what cost",
                    '<div class="summary">' + "".join(f"<p>{p}</p>" for p in verdict(result)) + "</div>")
    body += section("frontier", "Risk against accuracy", figure(
        plot, "Risk against accuracy", "Each point is one configuration (mean over its seeds); the dashed line joins "
        "the Pareto front (no other configuration is both safer and more accurate); the dotted line is the target."))
    body += section("configurations", "Every configuration", '<div class="scroll">' + table(
        header, rows, numeric=set(range(1, len(header) - 2)), id_="frontier-table") + "</div>"
        + '<p class="note">Test accuracy: the final global model\'s. Measured &epsilon;: the 95% lower bound the '
          "membership attacks imply. Accountant &epsilon;: the DP guarantee (client level) as Flower's RDP accountant "
          "computes it; central DP's does not cover the server. Meets target: yes (every seed), on average (the mean "
          "over the seeds does), no.</p>"
        + ("" if not result.get("failed") else '<p class="note">Runs that did not finish: '
           + esc(", ".join(f["dir"] for f in result["failed"])) + ".</p>"))
    return page(f"Privacy-utility frontier: {result['scenario']}", esc(f"target {result['target']['text']}; "
                f"defences: {', '.join(result['defences'])}"), body)


def build_frontier_report(out, result: dict) -> Path:
    """Write ``out/frontier.html`` (and ``out/plots/frontier.png``); return the HTML's path."""
    out = Path(out)
    plot = draw_frontier(result, out / "plots" / "frontier.png")
    path = out / "frontier.html"
    atomic_write_text(path, render_frontier(result, plot))
    return path


__all__ = ["build_frontier_report", "draw_frontier", "render_frontier", "verdict"]
