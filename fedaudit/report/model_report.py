"""``report.html`` of a single-model audit (``fedaudit audit-model``), from its run directory's files alone.

Sections: a plain-language summary, the headline table (one row per attack, with intervals and the empirical
epsilon), what was audited, the membership-probability histogram, ROC curves on linear and log axes (every attack,
from records.csv), risk per class and the members at highest risk. It reuses the run report's building blocks
(:mod:`fedaudit.report.html`, :mod:`fedaudit.report.fmt`, the cells of :mod:`fedaudit.report.run_report`) and
:mod:`fedaudit.plots`. ``fedaudit report RUN_DIR`` rebuilds it. No TensorFlow here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedaudit import plots
from fedaudit.errors import FedAuditError
from fedaudit.metrics import auc as auc_of
from fedaudit.metrics import roc_curve
from fedaudit.report.inferences import attribute_section
from fedaudit.report.fmt import level_rules_html, count, esc, f3, finite, pct
from fedaudit.risk import LEVEL_TEXT, risk_level
from fedaudit.report.html import figure, kv_table, missing, page, section, table, toc
from fedaudit.report.rundata import _as_float_array, read_csv_table
from fedaudit.report.run_report import _eps_cell, _tpr_cell
from fedaudit.rundir import atomic_write_text

KIND = "model-audit"
TOP_RECORDS = 20
ATTACK_TEXT = {
    "whitebox": "logistic regression on outputs and per-layer gradient norms (cross-fitted)",
    "blackbox": "logistic regression on the model's outputs only (cross-fitted)",
    "loss": "loss threshold (Yeom et al. 2018)",
    "confidence": "confidence threshold", "entropy": "entropy threshold",
    "modified-entropy": "modified entropy threshold (Song and Mittal 2021)",
    "population": "attack P: loss quantile of population records, per class (Ye et al. 2022)",
    "reference": "attack R: per-record reference models (Ye et al. 2022)",
    "lira-offline": "LiRA, offline (Carlini et al. 2022)", "lira-online": "LiRA, online (Carlini et al. 2022)",
    "lira": "LiRA, offline", "rmia": "RMIA, offline",
    "rmia-offline": "RMIA, offline (Zarifzadeh et al. 2024)", "rmia-online": "RMIA, online (Zarifzadeh et al. 2024)",
}


def is_model_audit(run_dir) -> bool:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def _load(run_dir: Path) -> tuple[dict, dict | None]:
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise FedAuditError(f"{run_dir / 'summary.json'}: unreadable ({exc})") from None
    return summary, read_csv_table(run_dir / "records.csv")


def _scores(records: dict, column: str):
    if records is None or column not in records:
        return None
    s = _as_float_array(records[column])
    m = _as_float_array(records["member"]) == 1
    ok = np.isfinite(s)
    if not (ok & m).any() or not (ok & ~m).any():
        return None
    return s[ok & m], s[ok & ~m]


def draw(summary: dict, records: dict | None, plots_dir: Path) -> dict:
    plots_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    curves = {}
    for name in summary.get("attacks", {}):
        pair = _scores(records, f"score_{name}")
        if pair is not None:
            fpr, tpr, _ = roc_curve(*pair)
            curves[name] = (fpr, tpr, auc_of(*pair))
    if curves:
        out["roc"] = plots.plot_roc(curves, plots_dir / "roc.png", title="ROC of the membership inference attacks")
        out["roc_log"] = plots.plot_roc(curves, plots_dir / "roc_log.png", log=True,
                                        title="ROC of the membership inference attacks (log scale)")
    risk = _scores(records, "risk")
    if risk is not None:
        out["histogram"] = plots.plot_probability_histogram(
            risk[0], risk[1], plots_dir / "histogram.png",
            title=f"Membership probability ({summary.get('headline', 'headline')} attack)")
    return out


def _summary_text(summary: dict) -> tuple[str | None, list[str]]:
    attacks = summary.get("attacks") or {}
    head = summary.get("headline")
    strongest = max((a for a in attacks if finite(attacks[a].get("auc"))), key=lambda a: attacks[a]["auc"],
                    default=None)
    data, model = summary.get("data", {}), summary.get("model", {})
    if strongest is None:
        return None, ["No attack produced a score; nothing was measured."]
    s = attacks[strongest]
    level = risk_level(s)
    text = [f"The strongest of {len(attacks)} attack{'s' if len(attacks) != 1 else ''} ({esc(strongest)}) tells the "
            f"model's {count(data.get('n_members'))} training records from {count(data.get('n_nonmembers'))} records "
            f"it never saw with AUC <strong>{f3(s.get('auc'))}</strong> (0.5 is guessing)"
            + (f" and identifies {pct(s.get('tpr_at_1pct'))} of the training records at a 1% false-positive rate"
               if finite(s.get("tpr_at_1pct")) else "") + f": risk <strong>{esc(LEVEL_TEXT[level])}</strong>."]
    if finite(model.get("member_accuracy")) and finite(model.get("nonmember_accuracy")):
        gap = model["member_accuracy"] - model["nonmember_accuracy"]
        text.append(f"The model is right on {pct(model['member_accuracy'])} of its training records and on "
                    f"{pct(model['nonmember_accuracy'])} of the others (a gap of {pct(gap)}); the larger the gap, "
                    "the more it has memorised.")
    if head and head in attacks and head != strongest:
        text.append(f"The membership probabilities below come from the {esc(head)} attack, the headline attack of "
                    "the configured ones.")
    return level, text


def _headline_rows(summary: dict) -> list[list[str]]:
    rows = []
    attacks = summary.get("attacks") or {}
    for name in sorted(attacks, key=lambda a: -(attacks[a].get("auc") or 0)):
        s = attacks[name]
        level = risk_level(s)
        badge = f'<span class="badge {level}">{esc(LEVEL_TEXT[level])}</span>' if level else ""
        rows.append([f"<strong>{esc(name)}</strong><br><span class=note>{esc(ATTACK_TEXT.get(name, ''))}</span>",
                     f"<strong>{f3(s.get('auc'))}</strong>", _tpr_cell(s, "tpr_at_1pct", 0.01),
                     _tpr_cell(s, "tpr_at_0_1pct", 0.001), _eps_cell(s),
                     f"{count(s.get('n_members'))} / {count(s.get('n_nonmembers'))}", badge])
    return rows


def _audited_pairs(summary: dict, run_dir: Path) -> list:
    m, d, st = summary.get("model", {}), summary.get("data", {}), summary.get("settings", {})
    pairs = [("Model", f"<code>{esc(m.get('path'))}</code> ({count(m.get('parameters'))} parameters, input "
                       f"{esc(m.get('input_shape'))}, {esc(m.get('num_classes'))} classes"
                       + ("; audited on the logits under its final softmax" if m.get("ends_in_softmax") else "") + ")"),
             ("Members (training records)", f"{count(d.get('n_members'))} from <code>{esc(d.get('members'))}</code>"),
             ("Non-members", f"{count(d.get('n_nonmembers'))} from <code>{esc(d.get('nonmembers'))}</code>")]
    if d.get("population"):
        pairs.append(("Population (never trained on)",
                      f"{count(d.get('n_population'))} from <code>{esc(d.get('population'))}</code>"))
    pairs.append(("Adversary's knowledge", f"{count(d.get('known_of_each'))} members and as many non-members with "
                                           f"their labels; {esc(st.get('folds'))}-fold cross-fitting"))
    if st.get("reference_models"):
        pairs.append(("Reference models", f"{esc(st.get('reference_models'))} of the saved architecture, "
                                          f"{esc(st.get('epochs'))} epochs, batch {esc(st.get('batch_size'))}, "
                                          f"{esc(st.get('optimizer'))} learning rate {esc(st.get('learning_rate'))}"))
    pairs.append(("Run directory", f"<code>{esc(run_dir.resolve())}</code>"))
    return pairs


def _class_rows(summary: dict, records: dict | None) -> list[list[str]]:
    head = summary.get("headline")
    if records is None or f"score_{head}" not in records or "label" not in records:
        return []
    s = _as_float_array(records[f"score_{head}"])
    m = _as_float_array(records["member"]) == 1
    labels = _as_float_array(records["label"])
    rows = []
    for c in np.unique(labels[np.isfinite(labels)]):
        sel = (labels == c) & np.isfinite(s)
        if (sel & m).any() and (sel & ~m).any():
            rows.append([esc(int(c)), count((sel & m).sum()), count((sel & ~m).sum()),
                         f3(auc_of(s[sel & m], s[sel & ~m]))])
    return rows


def _top_rows(records: dict | None) -> list[list[str]]:
    if records is None or "risk" not in records:
        return []
    risk = _as_float_array(records["risk"])
    m = _as_float_array(records["member"]) == 1
    ok = np.flatnonzero(np.isfinite(risk) & m)
    idx = ok[np.argsort(-risk[ok], kind="mergesort")[:TOP_RECORDS]]
    rows = []
    for i in idx:
        rows.append([esc(int(_as_float_array(records["row"])[i])), esc(int(_as_float_array(records["label"])[i])),
                     f3(_as_float_array(records["loss"])[i]), f"<strong>{f3(risk[i])}</strong>"])
    return rows


def render(summary: dict, records: dict | None, figures: dict, run_dir: Path) -> str:
    level, paragraphs = _summary_text(summary)
    body = (f'<section id="summary" class="summary level-{esc(level or "none")}"><h2>Summary for the DPIA</h2>'
            + "".join(f"<p>{p}</p>" for p in paragraphs) + "</section>")
    body += section("headline-section", "Risk per attack", table(
        ["Attack", "AUC", "Members identified at 1% FPR", "Members identified at 0.1% FPR",
         "Empirical &epsilon; (lower bound)", "Members / non-members", "Risk level"],
        _headline_rows(summary), numeric={1}, id_="headline"))
    body += section("audited", "What was audited", kv_table(_audited_pairs(summary, run_dir)))
    if figures:
        dist = figure(figures.get("histogram"), "Histogram of membership probability",
                      "The membership probability of training records (members) and of records the model never saw.")
        dist += '<div class="grid2">' + figure(figures.get("roc"), "ROC, linear axes", "Every attack's ROC.")
        dist += figure(figures.get("roc_log"), "ROC, log axes", "The low false-alarm region.") + "</div>"
    else:
        dist = missing("No per-record scores (records.csv is missing).")
    body += section("distributions", "Membership probability and ROC", dist)
    rows = _class_rows(summary, records)
    body += section("risk-classes", "Risk per class", table(["Class", "Members", "Non-members",
                                                              f"AUC ({esc(summary.get('headline'))})"], rows,
                                                             numeric={1, 2, 3}) if rows else missing("No classes."))
    rows = _top_rows(records)
    body += section("records", "Training records at highest risk", (table(
        ["Row in the members file", "Label", "Loss", "Membership probability"], rows, numeric={0, 2, 3},
        id_="top-records") + '<p class="note">Row: the record\'s line in the members file, so the data controller can '
        "find the person.</p>") if rows else missing("No member has a membership probability."))
    beyond = attribute_section(summary)
    if beyond:
        body += beyond
    rules = level_rules_html()
    body += section("method", "How to read this report", (
        "<p>A membership-inference attack tries to tell whether a record was in the model's training data. Attacks "
        "that learn from the adversary's known records score every record with an attack fitted on other records "
        "only (cross-fitting). The numbers are what these attacks achieved: lower bounds on the risk.</p>"
        f"<p><strong>Risk levels</strong> (a reading aid, not a legal threshold):</p>{rules}"))
    entries = [("summary", "Summary"), ("headline-section", "Risk per attack"), ("audited", "What was audited"),
               ("distributions", "Distributions"), ("risk-classes", "Per class"), ("records", "Records at risk"),
               ("method", "How to read")]
    if beyond:
        entries.insert(len(entries) - 1, ("beyond-membership", "Attribute inference"))
    name = Path(summary.get("model", {}).get("path") or run_dir.name).name
    subtitle = (f"Model <strong>{esc(name)}</strong> &middot; one trained model, "
                f"{len(summary.get('attacks') or {})} attack(s)")
    return page(f"Membership-inference risk report: {name}", subtitle, toc(entries) + body)


def build_model_report(run_dir) -> Path:
    """Write ``report.html`` and ``plots/*.png`` of a single-model audit; return report.html's path."""
    run_dir = Path(run_dir)
    summary, records = _load(run_dir)
    figures = draw(summary, records, run_dir / "plots")
    out = run_dir / "report.html"
    atomic_write_text(out, render(summary, records, figures, run_dir))
    return out


__all__ = ["build_model_report", "is_model_audit", "KIND"]
