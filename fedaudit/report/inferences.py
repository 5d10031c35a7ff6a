"""The report's "Beyond membership" section: each privacy-attack family of the EDPB's Opinion 28/2024 and of NIST
AI 100-2, and what this audit measured for it (``summary.json``'s ``inferences``), or why it was not measured.

Rendering only: the inferences run per round in the auditor (:mod:`fedaudit.inferences`) and are combined when
the run ends.
"""

from __future__ import annotations

from fedaudit.inferences.base import FAMILIES, inferences
from fedaudit.report.fmt import esc
from fedaudit.report.html import section, table

#: why a family is not measured when no configured inference covers it
NOT_MEASURED = {
    "attribute": "not measured: add \"attributes\" to [audit] inferences and name the column in "
                 "[audit] sensitive_attribute (tabular data)",
    "property": "not measured: add \"labels\" to [audit] inferences",
    "reconstruction": "not measured: add \"reconstruction\" to [audit] inferences (cost bounded by "
                      "[audit] reconstruction_clients and reconstruction_iterations)",
    "extraction": "not measured: applies to generative models, which can emit training data verbatim; the audited "
                  "model is a classifier, whose outputs are class scores",
}


def _membership(run) -> str:
    tms = run.threat_models()
    if not tms:
        return "not measured: the run was not audited"
    parts = []
    for tm in tms:
        headline, _ = run.headline(tm)
        auc = (headline.metrics.get("auc") if headline is not None else None)
        if auc is not None:
            parts.append(f"{tm}: AUC {float(auc):.3f}")
    return "measured (see Headline risk): " + ("; ".join(parts) if parts else "no headline yet")


def beyond_membership_rows(run) -> list[list[str]]:
    """One row per attack family: the family, where it applies, and what this run measured."""
    measured = run.summary.inferences or {}
    registered = inferences()
    rows = []
    for key, name, applies in FAMILIES:
        if key == "membership":
            rows.append([esc(name), esc(applies), esc(_membership(run))])
            continue
        mine = [(n, e) for n, e in measured.items() if e.family == key]
        if not mine:
            rows.append([esc(name), esc(applies), f'<span class="na">{esc(NOT_MEASURED.get(key, "not measured"))}'
                                                  "</span>"])
            continue
        cells = []
        for n, e in mine:
            if e.rounds == 0:
                cells.append(f'<span class="na">{esc(e.title or n)}: not measured: '
                             f'{esc(e.not_measured or "no round")}</span>')
                continue
            text = registered[n].finding(e.metrics) if n in registered else ""
            cells.append(f"<strong>{esc(e.title or n)}</strong>: {esc(text or 'measured')}")
        rows.append([esc(name), esc(applies), "<br>".join(cells)])
    return rows


def beyond_membership_section(run) -> str | None:
    """The section, or None when the run was not audited."""
    if not run.audited:
        return None
    body = ("<p>Regulators' guidance asks for more than membership: the EDPB (Opinion 28/2024) treats a model as "
            "anonymous only if personal data cannot be extracted from it or obtained by querying it with means "
            "reasonably likely to be used, and NIST AI 100-2 lists data reconstruction, membership inference and "
            "property inference as the privacy attacks. Each family below, with what this audit measured.</p>"
            + table(["attack family", "applies to", "this audit"], beyond_membership_rows(run)))
    return section("beyond-membership", "Beyond membership", body)


def attribute_section(summary: dict) -> str | None:
    """A single-model audit's attribute inference (``audit-model --sensitive-attribute``), or None."""
    entry = (summary.get("inferences") or {}).get("attributes")
    if not isinstance(entry, dict) or not isinstance(entry.get("last"), dict):
        return None
    from fedaudit.inferences.attributes import AttributeInference

    last, rows = entry["last"], []
    for group in ("members", "nonmembers"):
        g = last.get(group) or {}
        for attack in ("white-box", "trained", "imputation"):
            a = g.get(attack) or {}
            ci = a.get("accuracy_ci") or [None, None]
            adv = a.get("advantage_ci") or [None, None]
            rows.append([esc(group), esc(attack), _num(a.get("accuracy")) + (f" [{_num(ci[0])}, {_num(ci[1])}]"
                                                                             if ci[0] is not None else ""),
                         _num(a.get("auc")), "-" if a.get("advantage") is None else
                         f"{a['advantage']:+.3f} [{adv[0]:+.3f}, {adv[1]:+.3f}]"])
    body = (f"<p>{esc(AttributeInference().finding(entry))}</p>"
            + table(["records", "inference", "accuracy [95% CI]", "AUC", "advantage over imputation [95% CI]"],
                    rows))
    return section("beyond-membership", "Attribute inference", body)


def _num(v) -> str:
    return "-" if v is None else f"{float(v):.3f}"


__all__ = ["NOT_MEASURED", "attribute_section", "beyond_membership_rows", "beyond_membership_section"]
