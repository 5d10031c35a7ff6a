"""The few lines a finished run prints on standard error: headline risk per threat model, accuracy, the report.

Built from the run directory alone (like the report), so a run and ``fedaudit report`` say the same thing.
No TensorFlow here.
"""

from __future__ import annotations

import math
from pathlib import Path

from fedaudit.report.fmt import f3, finite, num, pct, ranges
from fedaudit.report.rundata import RunData, load_run, tm_title
from fedaudit.risk import LEVEL_TEXT, empirical_epsilon, risk_level


def _risk_line(label: str, summ: dict, attack: str | None, low: tuple[dict | None, str | None] = (None, None)) -> str:
    """One line of a metrics summary (a mapping): the headline attack's AUC and epsilon, then the TPR at 1% FPR as
    the report states it: ``low`` (metrics, attack) where an attack was chosen for that rate
    (:meth:`RunData.low_fpr`, measured on the records the adversary did not know), else the summary's own."""
    parts = [f"AUC {f3(summ.get('auc'))}"]
    low_eps, _ = empirical_epsilon(summ)
    if math.isfinite(low_eps) and low_eps > 0:
        parts.append(f"epsilon >= {low_eps:.2f}")
    text = f"{label}: " + ", ".join(parts) + (f" ({attack})" if attack else "")
    low_summ, low_attack = low
    tpr = num((low_summ if low_attack else summ).get("tpr_at_1pct"))
    at = f" ({low_attack}, on the records it did not know)" if low_attack else ""
    text += f"; TPR {pct(tpr)} at 1% FPR{at}" if math.isfinite(tpr) else "; TPR at 1% FPR not measurable"
    level = risk_level(summ, low_summ if low_attack else None)
    if level:
        text += f"; risk: {LEVEL_TEXT[level]}"
    return text


def audit_errors_text(run: RunData, prefix: str = "") -> str:
    """'the audit failed in rounds 1-3 (its error)' for rounds whose audit raised, else ''."""
    errors = run.audit_errors()
    if not errors:
        return ""
    rounds = [r for r, _ in errors]
    kinds = sorted(set(e for _, e in errors))
    return (f"{prefix}the audit failed in round{'s' if len(rounds) > 1 else ''} {ranges(rounds)} ("
            + "; ".join(k[:200] for k in kinds[:3]) + "; audit_error in rounds.jsonl, the traceback in the "
            "auditor's log)")


def run_lines(run: RunData, report: Path | None = None) -> list[str]:
    """Headline risk per threat model, the final test accuracy and the report's path, one fact a line."""
    lines = []
    for tm in run.threat_models():
        headline, _ = run.headline(tm)
        if headline is not None:
            who = tm_title(tm).lower()
            if run.sees_sum_only(tm):
                who += " (secure aggregation: the sum only)"
            lines.append(_risk_line(who, headline.metrics, run.headline_attack(tm), run.low_fpr(tm)))
    if not lines:
        lines.append("not audited (audit.enabled = false)" if run.scenario is not None and
                     not run.scenario.audit.enabled else "no audit results in the run directory")
    failed = audit_errors_text(run)
    if failed:
        lines.append(failed)
    acc = run.final_accuracy
    if finite(acc):
        lines.append(f"test accuracy {acc:.3f} after {run.rounds_done} round{'s' if run.rounds_done != 1 else ''}")
    if report is not None:
        lines.append(f"report: {report}")
    return lines


def model_lines(summary: dict, report: Path | None = None) -> list[str]:
    """The same for a single-model audit (``fedaudit audit-model``): one line per attack, the strongest first."""
    attacks = summary.get("attacks") or {}
    order = sorted(attacks, key=lambda a: -num(attacks[a].get("auc")) if finite(attacks[a].get("auc")) else 0)
    lines = [_risk_line(f"attack {name}", attacks[name], None) for name in order]
    acc = summary.get("model", {}).get("member_accuracy"), summary.get("model", {}).get("nonmember_accuracy")
    if all(finite(a) for a in acc):
        lines.append(f"model accuracy {acc[0]:.3f} on members, {acc[1]:.3f} on non-members")
    attributes = (summary.get("inferences") or {}).get("attributes")
    if attributes:
        from fedaudit.inferences.attributes import AttributeInference

        lines.append("attribute inference: " + AttributeInference().finding(attributes))
    if report is not None:
        lines.append(f"report: {report}")
    return lines


def run_summary(run_dir, report: Path | None = None) -> list[str]:
    return run_lines(load_run(run_dir), report)


__all__ = ["run_lines", "model_lines", "run_summary"]
