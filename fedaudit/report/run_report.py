"""``build_report(run_dir)``: report.html, plots/*.png and tensorboard/ from a run directory's files alone."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from fedaudit.privacy import ensure_dp, ensure_privacy
from fedaudit.report import figures as F
from fedaudit.report.console import audit_errors_text
from fedaudit.report.fmt import level_rules_html, count, eps, esc, f3, finite, num, pct, pct_ci, ranges
from fedaudit.report.html import figure, kv_table, missing, page, section, table, toc
from fedaudit.report.deviation import deviation_paragraphs, deviation_section
from fedaudit.report.inferences import beyond_membership_section
from fedaudit.report.narrative import summarize_run
from fedaudit.report.rundata import RunData, _as_float_array, load_run, tm_title
from fedaudit.risk import LEVEL_TEXT, empirical_epsilon, risk_level
from fedaudit.rundir import atomic_write_text

log = logging.getLogger(__name__)

PLOT_NAMES = ("utility", "risk_rounds", "clients", "client_rounds", "classes", "histogram", "roc", "roc_log")
TOP_RECORDS = 20


# ----------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------


def _ci(ci) -> str:
    text = pct_ci(ci)
    return f'<br><span class="ci">95% CI {text}</span>' if text else ""


def _eps_cell(summ: dict) -> str:
    """The empirical epsilon of a metrics summary (a mapping), as a table cell."""
    low, point = empirical_epsilon(summ)
    if not math.isfinite(low) and not math.isfinite(point):
        return '<span class="na">not computed</span>'
    delta = summ.get("epsilon_delta")
    main = f"<strong>&ge; {eps(low)}</strong>" if math.isfinite(low) else f"&ge; {eps(point)}"
    extra = ("95% confidence" + (f", &delta; = {esc(delta)}" if delta is not None else "")
             + (f"; point estimate {eps(point)}" if math.isfinite(point) and math.isfinite(low) else ""))
    return f'{main}<br><span class="ci">{extra}</span>'


def _tpr_cell(summ: dict, key: str, fpr: float) -> str:
    v = num(summ.get(key))
    if math.isfinite(v):
        return pct(v) + _ci(summ.get(key + "_ci"))
    n0 = num(summ.get("n_nonmembers"))
    if math.isfinite(n0):
        return (f'<span class="na">not measurable: {count(n0)} non-members, needs &ge; {int(round(1 / fpr)):,}'
                "</span>")
    return '<span class="na">not measured</span>'


def _low_fpr_cell(run: RunData, tm: str) -> str:
    """Members identified at 1% FPR by the attack strongest there (chosen on the known records, measured on the
    others), naming it."""
    low, attack = run.low_fpr(tm)
    return _tpr_cell(low or {}, "tpr_at_1pct", 0.01) + \
        (f'<br><span class="note">by {esc(attack)}, the strongest there on the records the adversary knew; '
         f'measured on the others ({count(low.get("n_members"))} / {count(low.get("n_nonmembers"))})</span>'
         if attack else "")


def _headline_note(run: RunData, tm: str, summ: dict) -> str:
    """Under the 0.1% cell, where the 1% cell names another attack: whose rate it is (the headline attack's, on
    every audited record: those the adversary did not know are too few non-members for 0.1%)."""
    if not run.low_fpr(tm)[1] or not math.isfinite(num(summ.get("tpr_at_0_1pct"))):
        return ""
    return '<br><span class="note">by the headline attack, on every audited record</span>'


def headline_rows(run: RunData) -> list[list[str]]:
    rows = []
    tms = run.threat_models()
    configured = run.configured_threat_models()
    for tm in list(tms) + [t for t in configured if t not in tms]:
        title = f"<strong>{esc(tm_title(tm))}</strong><br><span class=note>" \
                f"{esc(run.describe(tm))}</span>"
        headline, source = run.headline(tm)
        if headline is None:
            rows.append([title, '<span class="na">not audited</span>'] + [""] * 6)
            continue
        summ = headline.metrics
        level = risk_level(summ, run.low_fpr(tm)[0])
        badge = f'<span class="badge {level}">{esc(LEVEL_TEXT[level])}</span>' if level else ""
        attack = run.headline_attack(tm) or "aggregated"
        if run.sees_sum_only(tm):
            attack += " (aggregate-only: on the global models; no client's update is visible)"
        note = f'<br><span class="note">{esc(source)}</span>' if source and not source.startswith("all rounds") else ""
        rows.append([
            title,
            esc(attack) + note,
            f"<strong>{f3(summ.get('auc'))}</strong>",
            _low_fpr_cell(run, tm),
            _tpr_cell(summ, "tpr_at_0_1pct", 0.001) + _headline_note(run, tm, summ),
            _eps_cell(summ),
            f"{count(summ.get('n_members'))} / {count(summ.get('n_nonmembers'))}",
            badge,
        ])
    if not rows:
        rows.append(['<span class="na">no threat model</span>', '<span class="na">not audited</span>']
                    + [""] * 6)
    return rows


HEADLINE_HEADER = ["Adversary (threat model)", "Headline attack", "AUC", "Members identified at 1% FPR",
                   "Members identified at 0.1% FPR", "Empirical &epsilon; (lower bound)", "Members / non-members",
                   "Risk level"]


def headline_section(run: RunData) -> str:
    body = table(HEADLINE_HEADER, headline_rows(run), numeric={2}, id_="headline")
    body += ('<p class="note">AUC: probability that the attack scores a random member above a random non-member '
             "(0.5 = guessing). Members identified at x% FPR: the share of training records the attack flags when it "
             "is allowed to wrongly flag x% of non-members (guessing identifies x%). Empirical &epsilon;: the smallest "
             "differential-privacy &epsilon; consistent with the attack's success; any DP guarantee for this training "
             "must be at least this large.</p>")
    si = run.source_inference()
    if si and finite(si.get("accuracy")):
        naive = si.get("lowest_loss") if isinstance(si.get("lowest_loss"), dict) else {}
        who = run.per_client_threat_model() or "server"
        body += (f"<p><strong>Source inference</strong> ({esc(who)}): the client a member record came from is named "
                 f"correctly for {pct(si.get('accuracy'))} of members"
                 + (f" (guessing: {pct(si.get('chance'))})" if finite(si.get("chance")) else "")
                 + (f"; the naive rule (the client whose model gives the lowest loss) names "
                    f"{pct(naive.get('accuracy'))}" if finite(naive.get("accuracy")) else "") + ".</p>")
    if not run.audited:
        body += missing(_not_audited_text(run))
    return section("headline-section", "Headline risk per threat model", body)


def _not_audited_text(run: RunData) -> str:
    if run.scenario is not None and not run.scenario.audit.enabled:
        return "Not audited: this run had the audit switched off (audit.enabled = false)."
    return "Not audited: the run directory has no audit results."


def dp_section(run: RunData) -> str:
    dp = run.dp
    if run.dp_mode == "none" or dp is None:
        return ""
    mode = {"server": "server-side fixed clipping (the server clips each update, then adds noise)",
            "client": "client-side fixed clipping (each client clips its update; the server adds noise)"}.get(
        run.dp_mode, run.dp_mode)
    acc = dp.accountant_epsilon
    blank = lambda v: "" if v is None else v  # noqa: E731
    acc_text = (f"<strong>{eps(acc)}</strong>" if finite(acc) else
                ('<span class="na">infinite (noise multiplier 0)</span>' if num(dp.noise_multiplier) == 0
                 else f'<span class="na">not computed {esc(blank(dp.accountant_error))}</span>'))
    pairs = [("Mechanism", esc(mode)), ("Noise multiplier", esc(dp.noise_multiplier)),
             ("Clipping norm", esc(dp.clipping_norm)), ("&delta;", esc(dp.delta)),
             ("Client sampling", esc(blank(dp.sampling))), ("Rounds accounted", esc(blank(dp.rounds))),
             ("Accountant", esc(blank(dp.accountant)))]
    rows = [["Flower's privacy accountant (formal upper bound, client level)", acc_text, "any attack, any record"]]
    for tm in run.threat_models():
        headline, _ = run.headline(tm)
        if headline is not None:
            rows.append([f"Audit: empirical lower bound, {esc(tm_title(tm).lower())}",
                         _eps_cell(headline.metrics), esc(run.describe(tm))])
    if len(rows) == 1:
        rows.append(["Audit: empirical lower bound", '<span class="na">not audited</span>', ""])
    body = kv_table(pairs) + table(["", "&epsilon;", "Applies to"], rows, id_="dp-epsilons")
    body += ('<p class="note">The accountant bounds what any attacker who sees the noisy global models can learn about '
             "one client's data (and so about any one record). The audit's number is what its attacks actually "
             "achieved: a lower bound. A lower bound far below the accountant's value means the formal guarantee is "
             "loose for these attacks, not that it could be tightened. "
             + ("Under secure aggregation the server sees only the sum of the clipped updates, but before it adds the "
                "noise, so the guarantee does not cover the aggregator itself; " if run.aggregate_only else
                "The server sees every update before noise is added, so neither DP mode protects against the "
                "aggregator itself; ")
             + "the accountant assumes clipped updates are averaged uniformly.</p>")
    return section("dp", "Differential privacy: guaranteed vs measured", body)


def rounds_text(run: RunData) -> str:
    """'5 configured, 4 recorded (round 2 missing)', and how the run ended when it did not finish."""
    f = run.scenario.federation
    recorded = run.recorded_rounds()
    text = f"{f.rounds} configured, {len(recorded)} recorded"
    missing = run.missing_rounds()
    if missing:
        text += f" (round{'s' if len(missing) > 1 else ''} {ranges(missing)} missing)"
    st = run.status
    if st.state == "interrupted":
        where = f" in round {st.interrupted_in_round}" if st.interrupted_in_round else ""
        text += f"; the run was interrupted by {st.signal or 'a signal'}{where}"
    elif st.state in ("running", "failed"):
        text += "; the run " + ("failed" if st.state == "failed" else "did not finish (still running, or killed)")
    text += audit_errors_text(run, "; ")
    resumed = st.resumes
    if resumed:
        text += f"; resumed {resumed} time{'s' if resumed > 1 else ''}"
    return esc(text)


def audited_section(run: RunData, plots: dict) -> str:
    s = run.scenario
    pairs = []
    if s is not None:
        f, d, m, a = s.federation, s.data, s.model, s.audit
        opts = ", ".join(f"{k}={v}" for k, v in d.options.items())
        mopts = ", ".join(f"{k}={v}" for k, v in m.options.items())
        pairs += [
            ("Scenario", f"<strong>{esc(s.name)}</strong>"),
            ("Data", esc(d.dataset) + (f" ({esc(opts)})" if opts else "")),
            ("Model", esc(m.name) + (f" ({esc(mopts)})" if mopts else "")),
            ("Clients", f"{f.clients} (fraction {f.fraction:g} sampled per round)"),
            ("Rounds", rounds_text(run)),
            ("Local training", f"{f.local_epochs} epoch(s), batch {f.batch_size}, {esc(f.optimizer)} "
                               f"learning rate {f.learning_rate:g}"),
            ("Aggregation", esc(f.strategy)),
            ("Partition of the data", esc(f.partition)),
            ("Differential privacy", esc(s.dp.mode if s.dp.mode == "none" else
                                         f"{s.dp.mode}-side clipping, noise {s.dp.noise_multiplier:g}, "
                                         f"clip {s.dp.clipping_norm:g}, delta {s.dp.delta:g}")),
            ("Audit", (f"threat models {esc(', '.join(a.threat_models))}; attacks {esc(', '.join(a.attacks))}; "
                       f"adversary knows {a.attack_fraction:.0%} of the labels; {a.folds}-fold cross-fitting")
             if a.enabled else '<span class="na">off (not audited)</span>'),
            ("Seed", str(f.seed)),
        ]
    elif run.scenario_error:
        pairs.append(("Scenario", f'<span class="na">unreadable: {esc(run.scenario_error)}</span>'))
    if run.ledger:
        led = run.ledger
        sizes = led.get("clients") or []
        spread = f" (per client {min(sizes)} to {max(sizes)})" if sizes else ""
        pairs.append(("Records", f"{count(led.get('records'))} in all: {count(led.get('members'))} held by clients "
                                 f"(members){spread}, {count(led.get('population'))} never trained on (non-members), "
                                 f"{count(led.get('test'))} held out for testing"))
    pairs.append(("Run directory", f"<code>{esc(run.path.resolve())}</code>"))
    body = kv_table(pairs)
    body += "<h3>Utility per round</h3>"
    body += figure(plots.get("utility"), "Test accuracy and loss per round",
                   "Accuracy and loss of the global model on the held-out test records after each round.")
    if run.rounds:
        tms = run.threat_models()
        header = ["Round", "Test accuracy", "Test loss", "Training loss", "Clients replied"] + \
                 [f"AUC, {esc(tm)}" for tm in tms]
        rows = []
        for line in run.rounds:
            failed = line.failed or []
            replied = len(line.clients or [])
            cells = [esc(line.round), f3(line.model_accuracy), f3(line.loss), f3(line.train_loss),
                     f"{replied}" + (f' <span class="na">({len(failed)} failed)</span>' if failed else "")]
            for tm in tms:
                view = line.view(tm)
                cells.append(f3(view.auc) if view is not None else '<span class="na">not audited</span>')
            rows.append(cells)
        body += table(header, rows, numeric=set(range(1, len(header))))
    else:
        body += missing("No rounds recorded (rounds.jsonl is missing or empty).")
    if run.problems:
        body += ("<p class=note><strong>Problems in the run directory</strong> (what is shown here leaves these "
                 "out): " + esc("; ".join(run.problems)) + "</p>")
    return section("audited", "What was audited", body)


def rounds_section(run: RunData, plots: dict) -> str:
    if not plots.get("risk_rounds"):
        return section("risk-rounds", "Risk over rounds", missing(
            "Not audited: no per-round attack results." if not run.audited else
            "No per-round attack results in rounds.jsonl."))
    body = figure(plots["risk_rounds"], "Attack AUC and TPR per round",
                  "Left: AUC of each adversary's attack on the models of each round. Right: share of members it "
                  "identifies at 1% (solid) and 0.1% (dashed) false-positive rate, with 95% intervals (shaded).")
    return section("risk-rounds", "Risk over rounds", body)


def clients_section(run: RunData, plots: dict) -> str:
    table_cols = F.client_table(run)
    if table_cols is None:
        return section("risk-clients", "Risk per client", missing(
            "Not audited: no per-client results (clients.csv is missing and no round has per-client results)."))
    body = figure(plots.get("clients"), "Attack AUC per client",
                  ("Under secure aggregation the server has no client's model: this is the attack on the aggregated "
                   "models, per client's records among non-members. " if run.aggregate_only else
                   "The server attacks each client's returned model: how well it recognises that client's records "
                   "among non-members. ") + "Green is near guessing, red is high.")
    body += figure(plots.get("client_rounds"), "AUC per client and round", "The same per client and round.")
    auc = np.asarray(table_cols.get("auc", []), float)
    order = np.argsort(-np.nan_to_num(auc, nan=-1), kind="mergesort")
    tpr = np.asarray(table_cols.get("tpr_at_0_1pct", []), float)
    show_tpr = bool(np.isfinite(tpr).any())
    rounds_col = table_cols.get("rounds")
    show_rounds = rounds_col is not None
    header = ["Client", "Records", "AUC"] + (["Members identified at 0.1% FPR"] if show_tpr else []) + \
             ["Mean risk", "Max risk", "Peak round"] + (["Rounds trained"] if show_rounds else [])
    rows = []
    shown = order if order.size <= F.MANY_CLIENTS else order[:F.MOST_EXPOSED]
    for i in shown:
        def col(name, fmt=f3):
            values = table_cols.get(name)
            return fmt(values[i]) if values is not None and i < len(values) else '<span class="na">n/a</span>'
        as_int = lambda v: esc(int(v)) if finite(v) else '<span class="na">n/a</span>'  # noqa: E731
        rows.append([col("client", as_int), col("records", count), col("auc")]
                    + ([col("tpr_at_0_1pct", pct)] if show_tpr else [])
                    + [col("mean_risk"), col("max_risk"), col("peak_round", as_int)]
                    + ([esc(_rounds_count(rounds_col[i]))] if show_rounds else []))
    if shown.size < order.size:
        finite_auc = auc[np.isfinite(auc)]
        quantiles = ", ".join(f"{name} {f3(np.percentile(finite_auc, q))}" for name, q in
                              (("median", 50), ("90th percentile", 90), ("99th percentile", 99))) \
            if finite_auc.size else "none measured"
        body += (f"<p>The {shown.size} most exposed of the {finite_auc.size:,} clients with a measured AUC (all "
                 f"{order.size:,} clients are in <code>clients.csv</code>). Per-client AUC over them: {quantiles}.</p>")
    body += '<div class="scroll">' + table(header, rows, numeric=set(range(1, len(header))),
                                           id_="clients-table") + "</div>"
    if not show_tpr:
        body += ('<p class="note">The share of a client\'s records identified at 0.1% FPR is not shown: the audit had '
                 "fewer than 1,000 non-members, too few to measure it.</p>")
    body += ('<p class="note">Mean and max risk: the membership probability the audit gives the client\'s records '
             "(average and highest). Peak round: the round in which this client's records were easiest to "
             "recognise." + (" Rounds trained: the rounds in which the client was sampled and replied." if show_rounds
                             else "") + "</p>")
    body += sampling_note(run)
    return section("risk-clients", "Risk per client", body)


def _rounds_count(value) -> str:
    """How many rounds a clients.csv ``rounds`` cell lists ("1 2 5" -> 3; empty -> 0)."""
    text = "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else str(value)
    text = text[:-2] if text.endswith(".0") else text
    return str(len(text.split()))


def sampling_note(run: RunData) -> str:
    """How many records each figure rests on (the audit scores samples under every client's model)."""
    rec = run.summary.records if isinstance(run.summary.records, dict) else {}
    pop, src = rec.get("population_sample"), rec.get("source_sample")
    if not pop:
        return ""
    members, nonmembers, trained = rec.get("members"), rec.get("nonmembers"), rec.get("members_trained")
    text = (f"Each client's figures compare its own members with the same {count(pop)} population records (a fixed "
            f"sample of the {count(nonmembers)} non-members) under that client's models; their intervals and the "
            f"lowest measurable false-positive rate (1/{count(pop)}) rest on that sample. The headline figures use "
            f"every audited record: {count(members)} members and {count(nonmembers)} non-members.")
    if trained is not None and members is not None and trained < members:
        text += (f" {count(members - trained)} members belong to clients that were never sampled: no model trained "
                 "on them, so they are left out of the metrics.")
    if src:
        text += f" Source inference attributes a fixed sample of {count(src)} members."
    return f'<p class="note">{text}</p>'



def classes_section(run: RunData, plots: dict) -> str:
    if not plots.get("classes"):
        return section("risk-classes", "Risk per class", missing(
            "Not audited: no per-class results (needs records.csv with labels and scores, or slices in "
            "summary.json)."))
    body = figure(plots["classes"], "Attack AUC per class",
                  "How well each adversary recognises the members of each class among that class's non-members. "
                  "Small classes give noisy values.")
    per_tm = {tm: F.class_results(run, tm) for tm in run.threat_models()}
    per_tm = {tm: r for tm, r in per_tm.items() if r is not None}
    classes = sorted({c for r in per_tm.values() for c in r["classes"]}, key=lambda c: (c is None, c))
    header = ["Class"] + [f"AUC, {esc(tm)}" for tm in per_tm]
    with_tpr = [tm for tm, r in per_tm.items() if np.isfinite(r["tpr_at_1pct"]).any()]
    header += [f"Members identified at 1% FPR, {esc(tm)}" for tm in with_tpr] + ["Members / non-members"]
    rows = []
    for c in classes:
        cells = [esc(c)]
        counts = ""
        for tm, r in per_tm.items():
            i = r["classes"].index(c) if c in r["classes"] else None
            cells.append(f3(r["auc"][i]) if i is not None else '<span class="na">n/a</span>')
            if i is not None and not counts:
                counts = f"{r['n_members'][i]:,} / {r['n_nonmembers'][i]:,}"
        for tm in with_tpr:
            r = per_tm[tm]
            i = r["classes"].index(c) if c in r["classes"] else None
            cells.append(pct(r["tpr_at_1pct"][i]) if i is not None else '<span class="na">n/a</span>')
        rows.append(cells + [counts])
    if rows:
        body += table(header, rows, numeric=set(range(1, len(header))))
        if not with_tpr:
            body += ('<p class="note">Rates at 1% FPR per class are not shown: each class has fewer than 100 '
                     "non-members, too few to measure them.</p>")
    return section("risk-classes", "Risk per class", body)


def distributions_section(run: RunData, plots: dict) -> str:
    if not (plots.get("histogram") or plots.get("roc")):
        return section("distributions", "Membership probability and ROC", missing(
            "Not audited: no per-record scores (member_probs.npy / records.csv are missing)."))
    body = figure(plots.get("histogram"), "Histogram of membership probability",
                  "The audit's membership probability for training records (members) and for records no client "
                  "trained on (non-members). The more the two separate, the more the training leaks.")
    body += '<div class="grid2">'
    body += figure(plots.get("roc"), "ROC, linear axes",
                   "ROC: share of members identified (TPR) against share of non-members wrongly flagged (FPR).")
    body += figure(plots.get("roc_log"), "ROC, log axes",
                   "The same on log axes: the low false-alarm region, where an attack is dangerous for individuals.")
    body += "</div>"
    return section("distributions", "Membership probability and ROC", body)


def records_section(run: RunData) -> str:
    r = run.records
    if r is None or "risk" not in r:
        return section("records", "Records at highest risk", missing(
            "Not audited: no per-record results (records.csv is missing)."))
    risk = _as_float_array(r["risk"])
    member = _as_float_array(r.get("member", np.ones(risk.size)))
    ok = np.isfinite(risk) & (member == 1)
    idx = np.flatnonzero(ok)[np.argsort(-risk[ok], kind="mergesort")[:TOP_RECORDS]]
    if not idx.size:
        return section("records", "Records at highest risk", missing("No member has a risk score."))

    def cell(name, i, fmt):
        if name not in r:
            return '<span class="na">n/a</span>'
        return fmt(_as_float_array(r[name])[i])

    as_int = lambda v: esc(int(v)) if finite(v) else '<span class="na">n/a</span>'  # noqa: E731
    score = lambda v: f3(v) if finite(v) else '<span class="na">not audited</span>'  # noqa: E731
    tms = score_columns(run)
    rows = [[cell("record", i, as_int), cell("client", i, as_int), cell("label", i, as_int),
             f"<strong>{f3(risk[i])}</strong>"] + [cell(tm, i, score) for tm in tms] for i in idx]
    body = table(["Record", "Client", "Label", "Membership probability"] + [f"{esc(tm.capitalize())} score"
                                                                              for tm in tms], rows,
                 numeric={0, 3} | set(range(4, 4 + len(tms))), id_="top-records")
    note = ""
    if tms:
        names = " and ".join(tms) if len(tms) <= 2 else ", ".join(tms[:-1]) + " and " + tms[-1]
        note = f" {esc(names[0].upper() + names[1:])} scores: each adversary's own score (higher = more likely a member)."
    body += ('<p class="note">Record: the row of the record in the dataset (so the data controller can find the '
             "person). Membership probability: the audit's estimate, from all adversaries, that the record was used in "
             f"training.{note}</p>")
    return section("records", "Records at highest risk", body)


def score_columns(run: RunData) -> list[str]:
    """records.csv's per-threat-model score columns (the audited threat models, strongest first)."""
    from fedaudit.threat_model import ordered

    columns = set(run.records or {})
    return ordered(columns & (set(run.threat_models()) | set(_registered())))


def _registered() -> list[str]:
    from fedaudit.threat_model import threat_model_names

    return threat_model_names()


def _adversaries_text(run: RunData) -> str:
    """Who each adversary of the run is, and whose view the per-client risk is."""
    tms = run.threat_models() or run.configured_threat_models() or _registered()
    parts = [f"the <em>{esc(tm)}</em> is {esc(run.describe(tm) or tm)}" for tm in tms]
    text = "; ".join(parts)
    text = (text[0].upper() + text[1:] + ".") if text else ""
    per_client = run.per_client_threat_model()
    if per_client:
        text += f" Risk per client is the {esc(per_client)}'s view."
    return text


def method_section(run: RunData) -> str:
    rules = level_rules_html()
    body = (
        "<p><strong>What is measured.</strong> A membership-inference attack tries to tell whether a given person's "
        "record was part of the training data. Members are the records the clients trained on; non-members are "
        "records from the same source that no client saw. Each record is scored by attack models fitted on other "
        "records only (cross-fitting), so no record is judged by a model that saw its answer.</p>"
        "<p><strong>Who the adversaries are.</strong> " + _adversaries_text(run)
        + (" This run used secure aggregation: the server saw only the sum of the updates, so its view is the "
           "aggregate-only attack on the global models it computed, with no per-client models and no source "
           "inference." if run.aggregate_only else "") + "</p>"
        "<p><strong>Why low false-positive rates.</strong> An attack that is right on average can still be harmless "
        "for individuals; what matters for a person is whether the attacker can single out some records with few "
        "false alarms. Rates below 1 / (number of non-members) cannot be measured and are marked so.</p>"
        f"<p><strong>Risk levels used in this report</strong> (a reading aid, not a legal threshold):</p>{rules}"
        "<p><strong>Limits.</strong> The numbers are what these attacks achieved on this data; stronger attacks can "
        "only do better, so they are lower bounds on the risk. Intervals are 95% Clopper-Pearson intervals. "
        "Per-round results are also written as TensorBoard scalars in <code>tensorboard/</code>.</p>")
    return section("method", "How to read this report", body)


# ----------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------


def draw_plots(run: RunData, plots_dir: Path) -> dict:
    plots_dir.mkdir(parents=True, exist_ok=True)
    for name in PLOT_NAMES:
        (plots_dir / f"{name}.png").unlink(missing_ok=True)
    out = {
        "utility": F.plot_utility(run, plots_dir / "utility.png"),
        "risk_rounds": F.plot_risk_over_rounds(run, plots_dir / "risk_rounds.png"),
        "clients": F.plot_clients(run, plots_dir / "clients.png"),
        "client_rounds": F.plot_client_rounds(run, plots_dir / "client_rounds.png"),
        "classes": F.plot_classes(run, plots_dir / "classes.png"),
        "histogram": F.plot_histogram(run, plots_dir / "histogram.png"),
    }
    out["roc"], out["roc_log"] = F.plot_run_rocs(run, plots_dir)
    return out


def render_report(run: RunData, plots: dict) -> str:
    level, paragraphs = summarize_run(run)
    paragraphs = paragraphs + deviation_paragraphs(run)       # "if the server deviates from the protocol ..."
    summary = (f'<section id="summary" class="summary level-{esc(level or "none")}"><h2>Summary for the DPIA</h2>'
               + "".join(f"<p>{p}</p>" for p in paragraphs) + "</section>")
    sections = [summary, headline_section(run), dp_section(run), audited_section(run, plots),
                rounds_section(run, plots), clients_section(run, plots), classes_section(run, plots),
                distributions_section(run, plots), records_section(run), method_section(run)]
    entries = [("summary", "Summary"), ("headline-section", "Headline risk")]
    deviating = deviation_section(run)
    if deviating:
        sections.insert(2, deviating)
        entries.append(("deviating", "Deviating adversaries"))
    if run.dp_mode != "none" and run.dp is not None:
        entries.append(("dp", "Differential privacy"))
    entries += [("audited", "What was audited"), ("risk-rounds", "Over rounds"), ("risk-clients", "Per client"),
                ("risk-classes", "Per class"), ("distributions", "Distributions"), ("records", "Records at risk"),
                ("method", "How to read")]
    beyond = beyond_membership_section(run)       # before "How to read"
    if beyond:
        sections.insert(len(sections) - 1, beyond)
        entries.insert(len(entries) - 1, ("beyond-membership", "Beyond membership"))
    subtitle = (f"Scenario <strong>{esc(run.name)}</strong> &middot; federated learning, "
                f"{esc(run.scenario.federation.clients) if run.scenario else '?'} clients, "
                f"{run.rounds_done} round{'s' if run.rounds_done != 1 else ''} &middot; "
                + ("audited" if run.audited else "not audited"))
    return page(f"Membership-inference risk report: {run.name}", subtitle, toc(entries) + "".join(sections))


def build_report(run_dir, *, tensorboard: bool = True) -> Path:
    """Write ``report.html``, ``plots/*.png`` and ``tensorboard/`` into ``run_dir``; return report.html's path."""
    run = load_run(run_dir)
    ensure_dp(run.path, run.scenario, run.summary)
    ensure_privacy(run.path, run.scenario, run.summary)
    plots = draw_plots(run, run.path / "plots")
    if tensorboard:
        from fedaudit.report.tensorboard import write_scalars

        try:
            write_scalars(run, run.path / "tensorboard")
        except OSError as exc:
            log.warning("TensorBoard scalars not written: %s", exc)
    out = run.path / "report.html"
    atomic_write_text(out, render_report(run, plots))
    return out


__all__ = ["build_report", "render_report", "draw_plots", "headline_rows", "score_columns", "HEADLINE_HEADER"]
