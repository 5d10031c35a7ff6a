"""`fedaudit bench scale`: how the audit's cost grows with the number of clients, audited beside unaudited.

For clients = 100, 300, 1,000 (``--quick``: 10, 30) with 30 records each (plus 20% population and 5% test
records; synthetic purchase data, 100 features, 10 classes; mlp [64], 1 local epoch, batch 32, 3 rounds, every
client every round; attacks whitebox, blackbox, loss; threat models server and participant), one unaudited and
one audited run. ``--model cnn``: the registry's ``cnn`` on scikit-learn's digits as 8x8 images (every record:
about 4.5 per client at 300 clients), for clients = 100, 300 (``--quick``: 10, 30); its signals take the
TensorFlow probe, many client models per call (:func:`fedaudit.signals.extract.extract_many`). Each run is in
a fresh process that starts and stops its own Ray (so each pays its own imports).
Per size it prints: training seconds per round (the unaudited run's round wall time), audit seconds per round
(the auditor's own wall and CPU time per round, rounds after the first, which also pays start-up; CPU time
counts the audit tasks' processes too), the audited / unaudited
wall time of the whole run (up to Ray's shutdown; the report is not built), the bytes of the per-round arrays
the auditor saved, and the peak resident memory of the driver, of the auditor (target <= 700 MB) and of the task
that ran the inferences beyond membership (the default label inference; TensorFlow), with how long the auditor
waited for it per round. Then the exponent b of a
least-squares fit of the audit's CPU seconds per round ~ a * clients^b: 1 is linear (target <= 1.1); the same
fit on wall seconds is printed beside it.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

from fedaudit.bench.common import fresh_run, report
from fedaudit.config import scenario_from_dict
from fedaudit.federation.runtime import quiet_environment
from fedaudit.rundir import read_jsonl
from fedaudit.schema import RunSummary, read_rounds, read_summary

RECORDS_PER_CLIENT = 30
POPULATION, TEST = 0.2, 0.05
TARGETS = {"exponent": 1.1, "ratio_at_largest": 1.3, "round_arrays_mb": 50.0, "driver_rss_mb": 2048.0,
           "auditor_rss_mb": 700.0}


MODELS = ("mlp", "cnn")


def workload(clients: int, rounds: int = 3, model: str = "mlp") -> dict:
    if model == "cnn":
        data = {"dataset": "digits", "image": True, "population_fraction": POPULATION, "test_fraction": TEST}
        net = {"name": "cnn"}
    else:
        records = int(math.ceil(RECORDS_PER_CLIENT * clients / (1.0 - POPULATION - TEST)))
        data = {"dataset": "synthetic-purchase", "records": records, "features": 100, "classes": 10,
                "population_fraction": POPULATION, "test_fraction": TEST}
        net = {"name": "mlp", "hidden": [64]}
    return {"name": f"bench-scale-{model}-{clients}", "data": data, "model": net,
            "federation": {"clients": clients, "rounds": rounds, "local_epochs": 1, "batch_size": 32,
                           "learning_rate": 0.001, "optimizer": "adam", "seed": 0},
            "audit": {"enabled": False, "threat_models": ["server", "participant"],
                      "attacks": ["whitebox", "blackbox", "loss"]}}


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def measure(clients: int, rounds: int, tmp: Path, model: str = "mlp") -> dict:
    scenario = scenario_from_dict(workload(clients, rounds, model))
    path = tmp / f"{scenario.name}.toml"
    path.write_text(scenario.to_toml(), encoding="utf-8")
    plain_dir, audited_dir = tmp / f"{clients}-plain", tmp / f"{clients}-audited"
    plain = fresh_run("scale", path, plain_dir, False)
    audited = fresh_run("scale", path, audited_dir, True)
    train = [line.wall_seconds for line in read_rounds(plain_dir)]
    timing = read_jsonl(audited_dir / "audit" / "timing.jsonl")
    audit = [t["total"] for t in timing]
    audit_cpu = [t.get("cpu") for t in timing]
    arrays = [p.stat().st_size for p in sorted((audited_dir / "audit").glob("round_*.npz"))]
    agg = json.loads((audited_dir / "audit" / "aggregate_timing.json").read_text())
    # the auditor's own process, or the audit tasks' (shards) when they ran elsewhere; the inferences' task
    # (TensorFlow, for the label inference's shadow clients) apart, since its memory does not grow with clients
    task_rss = max((t.get("max_rss_mb", 0.0) for row in timing for t in row.get("tasks", [])), default=0.0)
    inference_rss = max((row["inference_task"].get("max_rss_mb", 0.0) for row in timing
                         if row.get("inference_task")), default=0.0)
    # a TensorFlow auditor runs them in a thread of its own process: their memory is then the auditor's
    shard_pids = {t.get("pid") for row in timing for t in row.get("tasks", [])}
    inference_here = any(row["inference_task"].get("pid") in shard_pids for row in timing if row.get("inference_task"))
    summary = read_summary(audited_dir) or RunSummary()
    return {
        "clients": clients, "records": scenario.data.options.get("records"), "rounds": rounds,
        "train_seconds_per_round": train, "train_seconds_after_first": _mean(train[1:]),
        "audit_seconds_per_round": audit, "audit_seconds_after_first": _mean(audit[1:]),
        "audit_cpu_per_round": audit_cpu, "audit_cpu_after_first": _mean(audit_cpu[1:]),
        "unaudited_wall": plain["wall"], "audited_wall": audited["wall"],
        "ratio": audited["wall"] / plain["wall"],
        "round_array_bytes": arrays, "round_array_mb": _mean(arrays) / 1e6,
        "driver_rss_mb": max(plain["driver_rss_mb"], audited["driver_rss_mb"]),
        "auditor_rss_mb": max(float(agg.get("max_rss_mb", 0.0)), float(task_rss)),
        "auditor_tensorflow": bool(agg.get("tensorflow_loaded", False)),
        "inference_task_rss_mb": float(inference_rss), "inferences_in_auditor": bool(inference_here),
        "inference_seconds_after_first": _mean([t.get("inferences") for t in timing][1:]),
        "server_auc": _auc(summary, "server"), "participant_auc": _auc(summary, "participant"),
    }


def _auc(summary: RunSummary, tm: str) -> float | None:
    view = summary.view(tm)
    return view.value("auc") if view is not None else None


def exponent(clients, seconds) -> float:
    """b of the least-squares fit log(seconds) = log(a) + b log(clients)."""
    x, y = np.log(np.asarray(clients, float)), np.log(np.asarray(seconds, float))
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 and np.all(np.isfinite(y)) else math.nan


def run(json_path: str | None = None, quick: bool = False, model: str = "mlp") -> dict:
    if model not in MODELS:
        from fedaudit.errors import ConfigError

        raise ConfigError(f"--model: {model!r} is not a scale workload; allowed: {', '.join(MODELS)}")
    quiet_environment()
    sizes, rounds = ((10, 30), 2) if quick else ((100, 300) if model == "cnn" else (100, 300, 1000), 3)
    with tempfile.TemporaryDirectory(prefix="fedaudit-bench-scale-") as tmp:
        results = []
        for k in sizes:
            results.append(measure(k, rounds, Path(tmp), model))
            r = results[-1]
            print(f"  measured {k} clients: audited/unaudited {r['ratio']:.2f}x, audit "
                  f"{r['audit_seconds_after_first']:.2f} s/round", file=sys.stderr, flush=True)
    # the exponent from the audit's CPU seconds (wall seconds on a shared machine include others' work)
    b = exponent([r["clients"] for r in results], [r["audit_cpu_after_first"] for r in results])
    b_wall = exponent([r["clients"] for r in results], [r["audit_seconds_after_first"] for r in results])
    largest = results[-1]
    figures = {"model": model, "workload": workload(sizes[-1], rounds, model), "sizes": results, "exponent": b, "exponent_wall": b_wall,
               "targets": TARGETS,
               "within_targets": {
                   "exponent": b <= TARGETS["exponent"],
                   "ratio_at_largest": largest["ratio"] <= TARGETS["ratio_at_largest"],
                   "round_arrays_mb": max(r["round_array_mb"] for r in results) <= TARGETS["round_arrays_mb"],
                   "driver_rss_mb": max(r["driver_rss_mb"] for r in results) <= TARGETS["driver_rss_mb"],
                   # a convolutional model's signals need TensorFlow in the auditor: its memory target is the mlp's
                   **({"auditor_rss_mb": max(r["auditor_rss_mb"] for r in results) <= TARGETS["auditor_rss_mb"]}
                      if model == "mlp" else {})}}
    data = (f"digits as 8x8 images (all 1,797 records, of which {POPULATION:.0%} population, {TEST:.0%} test), cnn"
            if model == "cnn" else f"synthetic purchase, {RECORDS_PER_CLIENT} records per client (+{POPULATION:.0%} "
                                   f"population, {TEST:.0%} test), mlp [64]")
    rows = [("workload", f"{data}, {rounds} rounds of 1 local epoch, every client every round; "
                         "audit: server + participant, whitebox/blackbox/loss")]
    for r in results:
        rows.append((f"{r['clients']} clients", (
            f"train {r['train_seconds_after_first']:.2f} s/round (round 1: {r['train_seconds_per_round'][0]:.1f} s), "
            f"audit {r['audit_seconds_after_first']:.2f} s/round, {r['audit_cpu_after_first']:.2f} CPU s/round "
            f"(round 1: {r['audit_seconds_per_round'][0]:.1f} s), "
            f"wall {r['audited_wall']:.1f} / {r['unaudited_wall']:.1f} s = {r['ratio']:.2f}x, "
            f"round arrays {r['round_array_mb']:.1f} MB, peak RSS driver {r['driver_rss_mb']:.0f} MB / "
            f"auditor {r['auditor_rss_mb']:.0f} MB{' (TensorFlow loaded)' if r['auditor_tensorflow'] else ''}, "
            + ("inferences in the auditor's process (waited for " if r["inferences_in_auditor"] else
               f"inferences' task {r['inference_task_rss_mb']:.0f} MB (waited for ")
            + f"{r['inference_seconds_after_first']:.2f} s/round), server AUC {_fmt(r['server_auc'])}")))
    rows.append(("audit CPU seconds ~ clients^b", f"b = {b:.2f} (target <= {TARGETS['exponent']}; from wall seconds: "
                                                  f"{b_wall:.2f})"))
    rows.append(("targets met", ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in figures["within_targets"].items())))
    return report(f"fedaudit bench scale --model {model}", rows, figures, json_path)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"
