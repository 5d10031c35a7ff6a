"""`fedaudit bench auditor`: the quickstart scenario with the audit on and off, in one command.

Every run is a whole scenario run in a fresh process (each pays its own imports and starts and stops its own
Ray), timed up to Ray's shutdown: the HTML report, which ``fedaudit run`` builds afterwards, is not the
auditor's cost (and takes longer for an audited run, which has more to show). The runs alternate,
plain-audited-audited-plain (one pair with ``--quick``), so that a machine getting busier or quieter over the
benchmark weighs on both sides alike; the ratio is the mean audited wall time over the mean plain one.
Target: at most 1.3x. Where the auditor's time goes comes from the files it writes: ``audit/starts.jsonl``
(actor start-up: wall and CPU seconds), ``audit/timing.jsonl`` (per round: signals, attacks, I/O),
``audit/aggregate_timing.json`` (the final aggregation, and the CPU seconds the auditor process used in all)
and ``audit/drain.json`` (how long the ServerApp waited for the auditor after the last round).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from fedaudit.bench.common import fresh_run, report
from fedaudit.config import Scenario, load_scenario, scenario_from_dict
from fedaudit.federation.runtime import quiet_environment
from fedaudit.rundir import read_jsonl
from fedaudit.schema import RunSummary, read_summary


def _auc(summary: RunSummary, tm: str) -> float | None:
    view = summary.view(tm)
    return view.value("auc") if view is not None else None


TARGET = 1.3


def quickstart() -> Scenario:
    path = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.toml"
    if path.is_file():
        return load_scenario(path)
    return scenario_from_dict({"name": "quickstart", "data": {"dataset": "digits"}, "model": {"name": "mlp"}})


def auditor_costs(run_dir: Path) -> dict:
    """The auditor's own seconds, from the files it wrote in ``run_dir/audit``."""
    audit = Path(run_dir) / "audit"
    rounds = read_jsonl(audit / "timing.jsonl")
    starts = read_jsonl(audit / "starts.jsonl")
    out = {phase: sum(r.get(phase, 0.0) for r in rounds) for phase in ("signals", "attacks", "io", "total")}
    out["per_round"] = [r.get("total", 0.0) for r in rounds]
    out["actor_start"] = sum(s.get("init_seconds", 0.0) for s in starts)
    out["actor_start_cpu"] = sum(s.get("init_cpu_seconds", 0.0) for s in starts)
    for name, key in (("aggregate_timing.json", "aggregate_seconds"), ("aggregate_timing.json", "process_cpu_seconds"),
                      ("drain.json", "total_wait_seconds"), ("drain.json", "rounds_wait_seconds")):
        path = audit / name
        out[key] = json.loads(path.read_text())[key] if path.exists() else None
    return out


def run(json_path: str | None = None, quick: bool = False) -> dict:
    quiet_environment()
    base = quickstart()
    if quick:
        base = base.with_overrides({"federation.rounds": 2, "federation.clients": 4, "federation.local_epochs": 2})
    order = [False, True] if quick else [False, True, True, False]
    walls: dict[bool, list] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="fedaudit-bench-auditor-") as tmp:
        scenario_file = Path(tmp) / "scenario.toml"
        scenario_file.write_text(base.to_toml(), encoding="utf-8")
        costs, summary = [], RunSummary()
        for i, audited in enumerate(order):
            out = Path(tmp) / f"run-{i}-{'audited' if audited else 'plain'}"
            walls[audited].append(fresh_run("auditor", scenario_file, out, audited)["wall"])
            if audited:
                costs.append(auditor_costs(out))
                summary = read_summary(out) or RunSummary()
    mean = {k: statistics.fmean(v) for k, v in walls.items()}
    cost = {k: statistics.fmean([c[k] for c in costs if c.get(k) is not None] or [float("nan")])
            for k in ("signals", "attacks", "io", "total", "actor_start", "actor_start_cpu", "aggregate_seconds",
                      "process_cpu_seconds", "total_wait_seconds", "rounds_wait_seconds")}
    f = base.federation
    ratio = mean[True] / mean[False]
    figures = {
        "workload": {"scenario": base.name, "dataset": base.data.dataset, "clients": f.clients, "rounds": f.rounds,
                     "local_epochs": f.local_epochs, "model": base.model.name,
                     "threat_models": list(base.audit.threat_models), "attacks": list(base.audit.attacks)},
        "order": ["audited" if a else "plain" for a in order],
        "plain_seconds": walls[False], "audited_seconds": walls[True], "ratio": ratio, "target": TARGET,
        "within_target": ratio <= TARGET, "auditor": cost, "auditor_runs": costs,
        "server_auc": _auc(summary, "server"), "participant_auc": _auc(summary, "participant"),
    }
    rows = [
        ("workload", f"{base.data.dataset}, {f.clients} clients, {f.rounds} rounds, {f.local_epochs} local epochs, "
                     f"{base.model.name}; audit: {', '.join(base.audit.threat_models)}"),
        ("runs (fresh processes)", " -> ".join(figures["order"])),
        ("plain run (wall)", _list(walls[False])),
        ("audited run (wall)", _list(walls[True])),
        (f"ratio of means (target <= {TARGET})", f"{ratio:.2f}x {'ok' if ratio <= TARGET else 'OVER TARGET'}"),
        ("auditor process CPU", f"{cost['process_cpu_seconds']:.1f} CPU s per run, of which start-up "
                                f"{cost['actor_start_cpu']:.1f} (Ray worker and imports; "
                                f"{cost['actor_start']:.1f} s wall, overlapping Flower's start-up)"),
        ("auditor per round", f"{cost['total']:.2f} s in all rounds: signals {cost['signals']:.2f} s, attack "
                              f"training and metrics {cost['attacks']:.2f} s, I/O {cost['io']:.2f} s"),
        ("final aggregation", f"{cost['aggregate_seconds']:.2f} s (records.csv, clients.csv, summary.json)"),
        ("ServerApp waited at the end", f"{cost['total_wait_seconds']:.2f} s (of which for rounds: "
                                        f"{cost['rounds_wait_seconds']:.2f} s)"),
    ]
    return report("fedaudit bench auditor", rows, figures, json_path)


def _list(values) -> str:
    return ", ".join(f"{v:.1f} s" for v in values) + f" (mean {statistics.fmean(values):.1f} s)"
