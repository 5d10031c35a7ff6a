"""``build_comparison(run_dirs, out)``: comparison.html for several runs side by side.

Built from the run directories' files alone (as the single-run report): a table of utility and risk per
threat model (AUC, TPR at 1% and 0.1% FPR with intervals, empirical epsilon, the DP accountant's epsilon),
ROC overlays, risk-over-rounds overlays, a privacy-utility scatter and, when any run used DP, the
accountant's epsilon beside the audit's. The settings that differ between the runs are found by diffing
their resolved scenarios, so the table says what was varied without being told.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

from fedaudit.errors import FedAuditError
from fedaudit.report import figures as F
from fedaudit.privacy import ensure_dp, ensure_privacy
from fedaudit.report.fmt import count, eps, esc, f3, finite, num, pct, pct_ci
from fedaudit.report.deviation import deviation_table
from fedaudit.report.html import figure, missing, page, section, table, toc
from fedaudit.report.rundata import RunData, load_run, threat_model, tm_noun, tm_possessive, tm_title
from fedaudit.risk import LEVEL_TEXT, empirical_epsilon, risk_level
from fedaudit.rundir import atomic_write_text
from fedaudit.schema import DpSummary
from fedaudit.threat_model import ordered

log = logging.getLogger(__name__)

SHORT = {"federation.partition": "partition", "federation.clients": "clients", "federation.local_epochs": "local epochs",
         "federation.rounds": "rounds", "federation.fraction": "fraction", "federation.strategy": "strategy",
         "federation.learning_rate": "learning rate", "federation.batch_size": "batch size",
         "federation.optimizer": "optimizer", "dp.mode": "DP", "dp.noise_multiplier": "noise",
         "dp.clipping_norm": "clip", "data.dataset": "data", "model.name": "model"}
IGNORED = {"name", "ray.address", "ray.num_cpus", "ray.client_cpus", "ray.client_gpus", "ray.auditor_gpus"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differing_settings(runs: list[RunData]) -> list[str]:
    """Dotted keys whose values differ between the runs' scenarios (DP details only where DP is on)."""
    flats = [_flatten(r.scenario.to_dict()) if r.scenario is not None else {} for r in runs]
    keys = sorted(set().union(*flats) - IGNORED) if flats else []
    diff = []
    for k in keys:
        values = set()
        for f in flats:
            if k.startswith("dp.") and k != "dp.mode" and f.get("dp.mode", "none") == "none":
                continue   # the noise settings of a run without DP do not matter
            values.add(repr(f.get(k)))
        if len(values) > 1:
            diff.append(k)
    order = list(SHORT)
    return sorted(diff, key=lambda k: (order.index(k) if k in order else len(order), k))


def setting_value(run: RunData, key: str) -> str:
    if run.scenario is None:
        return "?"
    v = _flatten(run.scenario.to_dict()).get(key)
    if key.startswith("dp.") and key != "dp.mode" and run.scenario.dp.mode == "none":
        return "-"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def default_labels(runs: list[RunData], diff: list[str]) -> list[str]:
    labels = []
    for r in runs:
        if diff and r.scenario is not None:
            parts = [f"{SHORT.get(k, k.split('.')[-1])}={setting_value(r, k)}" for k in diff
                     if not (k.startswith("dp.") and k != "dp.mode" and r.scenario.dp.mode == "none")]
            labels.append(", ".join(parts) or r.name)
        else:
            labels.append(r.name)
    # keep labels unique
    seen: dict = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def _threat_models(runs: list[RunData]) -> list[str]:
    """The threat models any of the runs audited, strongest first."""
    return ordered({tm for r in runs for tm in r.threat_models()})


def _headline(run: RunData, tm: str | None) -> dict | None:
    """A run's headline metrics (a mapping) for a threat model, or None."""
    headline = run.headline(tm)[0] if tm else None
    return headline.metrics if headline is not None else None


def _low(run: RunData, tm: str | None) -> dict | None:
    """The metrics a run's report states at 1% FPR for a threat model (the attack chosen for that rate, else the
    headline's), or None."""
    return run.low_fpr(tm)[0] if tm else None


def _main_tm(runs: list[RunData]) -> str | None:
    """The strongest threat model with a headline result in any run."""
    for tm in _threat_models(runs):
        if any(_headline(r, tm) for r in runs):
            return tm
    tms = _threat_models(runs)
    return tms[0] if tms else None


def _tpr(summ: dict, key: str) -> str:
    v = num(summ.get(key))
    if not math.isfinite(v):
        n0 = num(summ.get("n_nonmembers"))
        return (f'<span class="na">not measurable ({count(n0)} non-members)</span>' if math.isfinite(n0)
                else '<span class="na">n/a</span>')
    ci = pct_ci(summ.get(key + "_ci"))
    return pct(v) + (f'<br><span class="ci">{ci}</span>' if ci else "")


def _eps(summ: dict) -> str:
    low, point = empirical_epsilon(summ)
    if not math.isfinite(low) and not math.isfinite(point):
        return '<span class="na">n/a</span>'
    if not math.isfinite(low):
        return f"&ge; {eps(point)}"
    return f"<strong>&ge; {eps(low)}</strong>" + (f'<br><span class="ci">point {eps(point)}</span>'
                                                  if math.isfinite(point) else "")


def _accountant(run: RunData) -> str:
    if run.dp_mode == "none":
        return '<span class="na">no DP</span>'
    dp = run.dp or DpSummary()
    a = dp.accountant_epsilon
    if finite(a):
        return f"<strong>{eps(a)}</strong><br><span class=ci>&delta; = {esc(dp.delta)}</span>"
    if num(dp.noise_multiplier) == 0:
        return "infinite (no noise)"
    return '<span class="na">n/a</span>'


def _tm_accountant(run: RunData, tm: str | None) -> str:
    """The guarantee against this adversary (summary.json's privacy object), else the run's accountant."""
    p = run.privacy(tm)
    if p is None:
        return _accountant(run)
    a = p.accountant_epsilon
    if finite(a):
        return f"<strong>{eps(a)}</strong><br><span class=ci>&delta; = {esc(p.delta)}</span>"
    return f'<span class="na">{"no DP" if run.dp_mode == "none" else "none against this adversary"}</span>'


def _canary(run: RunData, tm: str | None) -> str:
    p = run.privacy(tm)
    if p is None or p.canary_epsilon is None:
        return '<span class="na">n/a</span>'
    c, ci = p.canary_epsilon, p.canary_epsilon_ci
    text = f"<strong>{eps(c) if finite(c) else 'unbounded'}</strong>"
    if isinstance(ci, list) and len(ci) == 2:
        text += f'<br><span class="ci">[{eps(ci[0])}, {eps(ci[1])}]</span>'
    return text


def _server_coverage(dp_runs: list) -> str:
    """Whether the DP runs' guarantees cover the server, in words: central DP's noise comes after the server has
    seen the updates (or, under secure aggregation, their sum); local DP's comes before anything leaves a client."""
    central = [r for r in dp_runs if r.dp_mode != "local"]
    if not central:
        return " Local DP adds the noise on each client, so the guarantee covers the server too."
    seen = "the sum of the updates" if all(r.aggregate_only for r in central) else \
        "each update" if not any(r.aggregate_only for r in central) else "each update (or, under secure aggregation, their sum)"
    text = f" Under central DP the server sees {seen} before noise is added, so the guarantee does not cover it."
    if len(central) < len(dp_runs):
        text += " Local DP adds the noise on each client, so its guarantee covers the server too."
    return text


def _link(run: RunData, out: Path, label: str) -> str:
    report = run.path / "report.html"
    if report.is_file():
        rel = os.path.relpath(report.resolve(), out.resolve())
        return f'<a href="{esc(Path(rel).as_posix())}">{esc(label)}</a>'
    return esc(label)


def comparison_table(runs: list[RunData], labels: list[str], out: Path) -> str:
    any_dp = any(r.dp_mode != "none" for r in runs)
    any_canary = any(r.privacy(tm) for r in runs for tm in _threat_models(runs) + r.summary.privacy_threat_models())
    header = ["Run", "Final test accuracy", "Adversary", "AUC", "Members identified at 1% FPR",
              "Members identified at 0.1% FPR", "Empirical &epsilon; (lower bound)"]
    if any_dp or any_canary:
        header.append("Accountant &epsilon; (DP guarantee)")
    if any_canary:
        header.append("Canary &epsilon; (measured, 95% interval)")
    header.append("Risk level")
    body = []
    for run, label in zip(runs, labels):
        tms = run.threat_models() or run.configured_threat_models() or [None]
        n = len(tms)
        for j, tm in enumerate(tms):
            cells = []
            if j == 0:
                acc = run.final_accuracy
                cells.append(f'<td rowspan="{n}">{_link(run, out, label)}</td>')
                cells.append(f'<td rowspan="{n}" class="num">{pct(acc) if math.isfinite(acc) else "n/a"}</td>')
            summ = _headline(run, tm)
            title = tm_title(tm) if tm else "-"
            if tm and run.sees_sum_only(tm):
                title += " (sum of the updates only: secure aggregation)"
            cells.append(f"<td>{esc(title)}</td>")
            if summ:
                low = _low(run, tm) or summ
                level = risk_level(summ, low)
                cells += [f'<td class="num"><strong>{f3(summ.get("auc"))}</strong></td>',
                          f'<td class="num">{_tpr(low, "tpr_at_1pct")}</td>',
                          f'<td class="num">{_tpr(summ, "tpr_at_0_1pct")}</td>',
                          f'<td class="num">{_eps(summ)}</td>']
                if any_canary:
                    cells += [f'<td class="num">{_tm_accountant(run, tm)}</td>', f'<td class="num">{_canary(run, tm)}</td>']
                elif any_dp:
                    cells.append(f'<td rowspan="{n}" class="num">{_accountant(run)}</td>' if j == 0 else "")
                cells.append(f'<td><span class="badge {level}">{esc(LEVEL_TEXT[level])}</span></td>' if level
                             else "<td></td>")
            else:
                cells += ['<td colspan="4"><span class="na">not audited</span></td>']
                if any_canary:
                    cells += [f'<td class="num">{_tm_accountant(run, tm)}</td>', f'<td class="num">{_canary(run, tm)}</td>']
                elif any_dp:
                    cells.append(f'<td rowspan="{n}" class="num">{_accountant(run)}</td>' if j == 0 else "")
                cells.append("<td></td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in header)
    return f'<table id="headline"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def settings_table(runs: list[RunData], labels: list[str], diff: list[str]) -> str:
    if not diff:
        return '<p class="note">The runs share every setting (they may differ only in their seed of randomness).</p>'
    header = ["Run"] + [esc(f"{SHORT.get(k, k)} ({k})") for k in diff]
    rows = [[esc(label)] + [esc(setting_value(r, k)) for k in diff] for r, label in zip(runs, labels)]
    return table(header, rows, id_="settings")


def common_settings(runs: list[RunData], diff: list[str]) -> str:
    s = next((r.scenario for r in runs if r.scenario is not None), None)
    if s is None:
        return ""
    f = s.federation
    parts = {"federation.clients": f"{f.clients} clients", "federation.rounds": f"{f.rounds} rounds",
             "federation.local_epochs": f"{f.local_epochs} local epochs", "federation.partition": f"{f.partition} partition",
             "data.dataset": f"data: {s.data.dataset}", "model.name": f"model: {s.model.name}",
             "federation.strategy": f"{f.strategy}", "dp.mode": f"DP: {s.dp.mode}"}
    common = [text for key, text in parts.items() if key not in diff]
    return ("<p>Common to all runs: " + esc("; ".join(common)) + ".</p>") if common else ""


def summary_paragraphs(runs: list[RunData], labels: list[str], diff: list[str]) -> list[str]:
    paras = []
    varied = ", ".join(SHORT.get(k, k) for k in diff) or "nothing in their settings"
    paras.append(f"{len(runs)} runs compared; they differ in {esc(varied)}.")
    tm = _main_tm(runs)
    if tm is None:
        paras.append("<strong>Not audited.</strong> None of these runs has audit results, so only utility is "
                     "compared.")
    else:
        rows = [(label, run, _headline(run, tm)) for run, label in zip(runs, labels)]
        rows = [(label, run, s) for label, run, s in rows if s and finite(s.get("auc"))]
        if rows:
            rows.sort(key=lambda x: num(x[2].get("auc")))
            lo, hi = rows[0], rows[-1]
            m = threat_model(tm)
            noun = re.sub(r" \(.*\)$", "", tm_noun(tm)) if m is not None else tm     # without its aside

            def desc(item):
                label, run, s = item
                t = num((_low(run, tm) or s).get("tpr_at_1pct"))
                return (f"<strong>{esc(label)}</strong> (AUC {f3(s.get('auc'), 2)}"
                        + (f", {pct(t)} of members identified at 1% FPR" if math.isfinite(t) else "")
                        + (f", accuracy {pct(run.final_accuracy)}" if math.isfinite(run.final_accuracy) else "") + ")")

            if len(rows) > 1:
                paras.append(f"Seen by {esc(noun)}, the highest membership risk is in {desc(hi)}, the lowest in "
                             f"{desc(lo)}.")
                levels = {risk_level(x[2], _low(x[1], tm)) for x in rows} - {None}
                if len(levels) == 1:
                    paras.append(f"All runs are at the same risk level for {esc(noun)}: "
                                 f"{esc(LEVEL_TEXT[levels.pop()])}.")
                elif levels:
                    level_hi, level_lo = risk_level(hi[2], _low(hi[1], tm)), risk_level(lo[2], _low(lo[1], tm))
                    paras.append(f"Risk levels range from {esc(LEVEL_TEXT[level_lo])} to {esc(LEVEL_TEXT[level_hi])}.")
            else:
                paras.append(f"Seen by {esc(noun)}: {desc(hi)}.")
    accs = [(run.final_accuracy, label) for run, label in zip(runs, labels) if math.isfinite(run.final_accuracy)]
    if len(accs) > 1:
        accs.sort()
        paras.append(f"Utility: test accuracy ranges from {pct(accs[0][0])} ({esc(accs[0][1])}) to {pct(accs[-1][0])} "
                     f"({esc(accs[-1][1])}).")
    dp_runs = [(run, label) for run, label in zip(runs, labels) if run.dp_mode != "none" and run.dp is not None]
    if dp_runs:
        bits = []
        for run, label in dp_runs:
            a = run.dp.accountant_epsilon
            emp = []
            for t in run.threat_models():
                low = empirical_epsilon(_headline(run, t))[0]
                if math.isfinite(low):
                    emp.append(f"{esc(t)} &ge; {eps(low)}")
            bits.append(f"<strong>{esc(label)}</strong>: accountant &epsilon; = {eps(a) if finite(a) else 'infinite'}"
                        + (f"; audit measured {', '.join(emp)}" if emp else "; not audited"))
        paras.append("Differential privacy (&epsilon; at &delta; = "
                     f"{esc(dp_runs[0][0].dp.delta)}): " + "; ".join(bits) + ". The accountant's value is a "
                     "formal upper bound for anyone who sees the global models, such as a participant; the audit's "
                     "values are what its attacks achieved (lower bounds, 95% confidence)."
                     + _server_coverage([run for run, _ in dp_runs]))
        no_dp = [run for run in runs if run.dp_mode == "none"]
        for tm in _threat_models(runs):
            base = [num((_headline(r, tm) or {}).get("auc")) for r in no_dp]
            with_dp = [num((_headline(r, tm) or {}).get("auc")) for r, _ in dp_runs]
            base = [v for v in base if math.isfinite(v)]
            with_dp = [v for v in with_dp if math.isfinite(v)]
            if base and with_dp:
                m = threat_model(tm)
                noun = tm_possessive(tm).replace("honest-but-curious ", "")
                paras.append(f"With DP, {esc(noun)} AUC is {f3(min(with_dp), 2)} to {f3(max(with_dp), 2)}, against "
                             f"{f3(max(base), 2)} without"
                             + (" &mdash; DP barely changes what the server learns from the raw updates."
                                if m is not None and m.per_client_models and max(base) - min(with_dp) < 0.05 else "."))
    return paras


def draw_comparison_plots(runs: list[RunData], labels: list[str], plots_dir: Path) -> dict:
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("compare_*.png"):
        old.unlink(missing_ok=True)
    out = {}
    for tm in _threat_models(runs):
        out[f"roc_{tm}"] = F.plot_roc_overlay(runs, labels, tm, plots_dir / f"compare_roc_{tm}.png")
        out[f"roc_log_{tm}"] = F.plot_roc_overlay(runs, labels, tm, plots_dir / f"compare_roc_log_{tm}.png", log=True)
        out[f"auc_rounds_{tm}"] = F.plot_rounds_overlay(
            runs, labels, "auc", plots_dir / f"compare_auc_rounds_{tm}.png", tms=[tm], ylabel="Attack AUC",
            title=f"AUC per round, {tm}")
        out[f"tpr_rounds_{tm}"] = F.plot_rounds_overlay(
            runs, labels, "tpr_at_1pct", plots_dir / f"compare_tpr_rounds_{tm}.png", tms=[tm],
            ylabel="Members identified at 1% FPR (%)", percent=True,
            title=f"Members identified at 1% FPR per round, {tm}")
    out["utility"] = F.plot_rounds_overlay(runs, labels, "model_accuracy", plots_dir / "compare_utility.png",
                                           ylabel="Test accuracy", title="Utility over rounds")
    points = []
    for run, label in zip(runs, labels):
        for tm in run.threat_models():
            summ = run.headline(tm)[0]
            if summ is not None:
                points.append({"label": label, "tm": tm, "auc": num(summ.value("auc")), "accuracy": run.final_accuracy})
    out["privacy_utility"] = F.plot_privacy_utility(points, plots_dir / "compare_privacy_utility.png")
    if any(r.dp_mode != "none" for r in runs):
        rows = []
        for run, label in zip(runs, labels):
            acc = None
            if run.dp_mode != "none":
                a = (run.dp or DpSummary()).accountant_epsilon
                acc = num(a) if finite(a) else math.inf
            rows.append({"label": label, "accountant": acc,
                         "empirical": {tm: empirical_epsilon(_headline(run, tm))[0]
                                       for tm in run.threat_models()}})
        out["epsilons"] = F.plot_epsilons(rows, plots_dir / "compare_epsilons.png")
    return out


def render_comparison(runs: list[RunData], labels: list[str], out: Path, *, title: str | None = None,
                      description: str | None = None, failures: list[dict] | None = None) -> str:
    diff = differing_settings(runs)
    plots = draw_comparison_plots(runs, labels, out / "plots")
    paras = summary_paragraphs(runs, labels, diff)
    intro = f"<p>{esc(description)}</p>" if description else ""
    sections = [f'<section id="summary" class="summary"><h2>Summary</h2>{intro}'
                + "".join(f"<p>{p}</p>" for p in paras) + "</section>"]
    body = comparison_table(runs, labels, out)
    body += ('<p class="note">Each run\'s name links to its full report. AUC: 0.5 is guessing. Members identified '
             "at x% FPR: the share of training records the attack flags while wrongly flagging x% of non-members "
             "(95% intervals below). Empirical &epsilon;: the smallest DP &epsilon; consistent with the attack "
             "(a lower bound); the accountant's &epsilon; is the formal guarantee of DP training (an upper bound).</p>")
    if failures:
        body += "<h3>Runs that failed</h3>" + table(
            ["Run", "Error"], [[esc(f.get("label", "?")), esc(f.get("error", ""))] for f in failures])
    sections.append(section("side-by-side", "Side by side", body))
    deviating = deviation_table(runs, labels)
    if deviating:
        sections.append(section("deviating", "Adversaries that deviate from the protocol", deviating + (
            '<p class="note">Each deviating adversary ran in a federation of its own beside the run that followed the '
            "protocol, with the same seed, and is measured on its target records beside its passive twin on the same "
            "records (95% intervals). Test accuracy: the passive run's and the deviating run's final global model; a "
            "large drop is a deviation a deployment would notice. Norm ratio: the largest ratio, over the rounds, of "
            "the norm of the model the deviating server sent to the honest one's.</p>")))
    sections.append(section("settings-section", "What differs between the runs",
                            settings_table(runs, labels, diff) + common_settings(runs, diff)))
    if plots.get("epsilons"):
        sections.append(section("dp", "Differential privacy: guaranteed vs measured", figure(
            plots["epsilons"], "Accountant epsilon beside empirical epsilon",
            "Purple: epsilon certified by Flower's privacy accountant (RDP, client level) for the DP runs. Red and "
            "blue: the empirical lower bound the audit measured for the server and for a participant. Runs without "
            "DP have no formal bound.")))
    pu = figure(plots.get("privacy_utility"), "Privacy-utility scatter",
                "Each marker is a run (filled: server's view; hollow: a participant's). Up and to the left is better: "
                "more accurate and harder to attack.")
    sections.append(section("privacy-utility", "Privacy-utility trade-off", pu or missing(
        "Not audited: no run has both an audit result and a test accuracy.")))
    roc = ""
    rounds = ""
    for tm in _threat_models(runs):
        pair = [figure(plots.get(f"roc_{tm}"), f"ROC overlay, {tm}"), figure(plots.get(f"roc_log_{tm}"),
                                                                               f"ROC overlay (log), {tm}")]
        if any(pair):
            roc += f"<h3>{esc(tm_title(tm))}</h3><div class=\"grid2\">{''.join(pair)}</div>"
        r = figure(plots.get(f"auc_rounds_{tm}"), f"AUC per round, {tm}") + figure(
            plots.get(f"tpr_rounds_{tm}"), f"TPR at 1% FPR per round, {tm}")
        if r:
            rounds += f"<h3>{esc(tm_title(tm))}</h3>{r}"
    sections.append(section("roc", "ROC curves", roc or missing("Not audited: no per-record scores to draw ROC "
                                                               "curves from.")))
    sections.append(section("rounds", "Risk and utility over rounds", rounds + figure(
        plots.get("utility"), "Test accuracy per round", "Test accuracy of each run's global model per round.")))
    entries = [("summary", "Summary"), ("side-by-side", "Side by side")]
    if deviating:
        entries.append(("deviating", "Deviating adversaries"))
    entries.append(("settings-section", "Settings"))
    if plots.get("epsilons"):
        entries.append(("dp", "Differential privacy"))
    entries += [("privacy-utility", "Privacy-utility"), ("roc", "ROC"), ("rounds", "Over rounds")]
    subtitle = f"{len(runs)} federated-learning runs side by side"
    return page(title or "Membership-inference risk: comparison of runs", subtitle, toc(entries) + "".join(sections))


def build_comparison(run_dirs, out, *, labels: list[str] | None = None, title: str | None = None,
                     description: str | None = None, failures: list[dict] | None = None) -> Path:
    """Write ``out/comparison.html`` and ``out/plots/compare_*.png``; return the HTML's path."""
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs and not failures:
        raise FedAuditError("compare: name at least one run directory")
    runs = []
    for p in run_dirs:
        run = load_run(p)
        ensure_dp(run.path, run.scenario, run.summary, write=False)
        if run.summary.privacy is None:
            ensure_privacy(run.path, run.scenario, run.summary, write=False)
        runs.append(run)
    if labels is None:
        labels = default_labels(runs, differing_settings(runs))
    elif len(labels) != len(runs):
        raise FedAuditError(f"compare: {len(labels)} labels for {len(runs)} run directories")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "comparison.html"
    atomic_write_text(path, render_comparison(runs, list(labels), out, title=title, description=description,
                                              failures=failures))
    return path


__all__ = ["build_comparison", "differing_settings", "default_labels"]
