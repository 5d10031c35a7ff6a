"""What the report says about the adversaries that deviate from the protocol (:mod:`fedaudit.twins`): each beside its
passive twin of the same seed, on the same target records, with what the deviation cost it.

Rendering only: the comparison is computed when the run ends (``summary.json``: ``threat_models.<name>.comparison``).
"""

from __future__ import annotations

from fedaudit.report.fmt import esc, f3, pct
from fedaudit.report.html import section, table
from fedaudit.threat_model import get_threat_model, ordered, threat_model_names


def deviating(run) -> list[tuple[str, dict]]:
    """``[(threat model, its comparison with its passive twin)]`` of a run, in the registry's order."""
    names = [n for n in ordered(run.summary.threat_models) if n in threat_model_names()
             and get_threat_model(n).deviation]
    out = []
    for name in names:
        comparison = run.summary.threat_models[name].extra.get("comparison")
        if isinstance(comparison, dict):
            out.append((name, comparison))
    return out


def _ci(summ: dict | None, key: str) -> str:
    if not summ or summ.get(key) is None:
        return "not measured"
    ci = summ.get(key + "_ci") or [None, None]
    value = f3(summ[key]) if key == "auc" else pct(summ[key])
    if ci[0] is None or ci[1] is None:
        return value
    fmt = f3 if key == "auc" else pct
    return f"{value} [{fmt(ci[0])}, {fmt(ci[1])}]"


def _verdict(comparison: dict) -> str:
    s, rounds = comparison.get("stronger") or {}, len(comparison.get("per_round") or [])
    if s.get("stacked_auc") or s.get("stacked_tpr_at_1pct"):
        return "its interval lies above the passive adversary's: deviating from the protocol buys it more"
    above = max(s.get("rounds_above_auc", 0), s.get("rounds_above_tpr_at_1pct", 0))
    if above:
        return (f"over all rounds the intervals overlap, but in {above} of {rounds} rounds its interval lies above the "
                "passive adversary's")
    return "the intervals overlap: no measurable gain over following the protocol on this data"


def deviation_paragraphs(run) -> list[str]:
    """One paragraph (HTML, without its ``<p>``) per deviating adversary: "if the server deviates from the
    protocol ..."."""
    out = []
    for name, c in deviating(run):
        tm, twin = get_threat_model(name), get_threat_model(c.get("passive_twin") or "server")
        stacked = c.get("stacked") or {}
        a, p = stacked.get("active"), stacked.get("passive")
        scored = (c.get("targets") or {}).get("scored") or c.get("targets") or {}
        cost = c.get("cost") or {}
        acc = cost.get("model_accuracy") or {}
        who = "the server" if twin.per_client_models else "a client"
        described = esc(tm.describe(bool(run.aggregate_only)))
        text = (f"If {who} deviates from the protocol: {esc(tm.noun)}, {described}, measured on "
                f"{scored.get('members', 0)} members and {scored.get('nonmembers', 0)} non-members among its target "
                f"records, reaches an AUC of {_ci(a, 'auc')} and identifies {_ci(a, 'tpr_at_1pct')} of the members at "
                f"1% false positives, against {_ci(p, 'auc')} and {_ci(p, 'tpr_at_1pct')} for "
                f"{esc(twin.noun)} on the same records in the run of the same seed that followed the protocol; "
                f"{_verdict(c)}.")
        if acc.get("deviating") is not None and acc.get("passive") is not None:
            visible = "a drop anyone who evaluates the model would notice" if cost.get("ruins_the_model") else \
                "a difference within what training noise explains" if abs(acc.get("drop") or 0) < 0.02 else \
                "a drop a deployment that tracks test accuracy could notice"
            text += (f" The deviation cost it test accuracy: {pct(acc['deviating'])} against {pct(acc['passive'])}, "
                     f"{visible}.")
        ratio = cost.get("sent_norm_ratio_max")
        if ratio is not None:
            text += f" The models it sent had up to {f3(ratio, 2)} times the norm of the honest ones."
        out.append(text)
    return out


def deviation_section(run) -> str | None:
    """The report's section on the deviating adversaries: per adversary and round, beside the passive twin."""
    rows = []
    for name, c in deviating(run):
        tm = get_threat_model(name)
        for r in c.get("per_round") or []:
            rows.append([esc(tm.title), str(r.get("round")), _ci(r.get("active"), "auc"), _ci(r.get("passive"), "auc"),
                         _ci(r.get("active"), "tpr_at_1pct"), _ci(r.get("passive"), "tpr_at_1pct")])
        stacked = c.get("stacked") or {}
        rows.append([esc(tm.title), "all (stacked)", _ci(stacked.get("active"), "auc"),
                     _ci(stacked.get("passive"), "auc"), _ci(stacked.get("active"), "tpr_at_1pct"),
                     _ci(stacked.get("passive"), "tpr_at_1pct")])
    if not rows:
        return None
    body = "".join(f"<p>{p}</p>" for p in deviation_paragraphs(run)) + table(
        ["adversary", "round", "AUC, deviating", "AUC, passive twin", "TPR at 1% FPR, deviating",
         "TPR at 1% FPR, passive twin"], rows)
    return section("deviating", "Adversaries that deviate from the protocol", body)


def deviation_rows(runs, labels) -> list[list[str]]:
    """The comparison page's rows: per run and deviating adversary, beside its passive twin, with utility and
    visibility."""
    rows = []
    for run, label in zip(runs, labels):
        for name, c in deviating(run):
            stacked = c.get("stacked") or {}
            cost = c.get("cost") or {}
            acc = cost.get("model_accuracy") or {}
            ratio = cost.get("sent_norm_ratio_max")
            rows.append([esc(label), esc(get_threat_model(name).title),
                         f"{pct(acc.get('passive'))} / {pct(acc.get('deviating'))}",
                         _ci(stacked.get("active"), "auc"), _ci(stacked.get("passive"), "auc"),
                         _ci(stacked.get("active"), "tpr_at_1pct"), _ci(stacked.get("passive"), "tpr_at_1pct"),
                         "-" if ratio is None else f3(ratio, 2)])
    return rows


def deviation_table(runs, labels) -> str | None:
    rows = deviation_rows(runs, labels)
    if not rows:
        return None
    return table(["run", "adversary", "test accuracy passive / deviating", "AUC, deviating", "AUC, passive twin",
                  "TPR at 1% FPR, deviating", "TPR at 1% FPR, passive twin", "sent-model norm ratio"], rows)


__all__ = ["deviating", "deviation_paragraphs", "deviation_rows", "deviation_section", "deviation_table"]
