"""What smaller shared samples buy and cost at scale: `fedaudit bench scale`'s workload at one size, one unaudited
run, then one audited run per (population_sample, source_sample) pair, each in a fresh process.

    python simulations/scale_samples.py --model cnn --clients 300 --samples 1000,1000 120,300

Every client's model scores the population sample (with every gradient norm) and the source sample, so their sizes
set the audit's cost per client. Per pair it prints the audited / unaudited wall, the audit's CPU seconds per round
(rounds after the first), the server's headline (AUC, TPR at 1% FPR: every audited record is still scored under the
model of the client that holds it or its pseudo-owner, whatever the samples), the per-client AUCs beside the first
pair's (median, mean absolute difference, correlation: client k's members against the population sample under
theta_k), and the source inference's accuracy with its 95% interval (on source_sample members).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np


def _pair(text: str) -> tuple[int, int]:
    try:
        pop, src = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: POPULATION,SOURCE, two positive integers") from None
    if pop < 1 or src < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: two positive integers")
    return pop, src


def _client_aucs(run_dir: Path) -> dict:
    with open(run_dir / "clients.csv", newline="", encoding="utf-8") as fh:
        return {int(r["client"]): float(r["auc"]) for r in csv.DictReader(fh) if r.get("auc")}


def measure(model: str, clients: int, rounds: int, pairs: list, tmp: Path) -> list[dict]:
    from fedaudit.bench.common import fresh_run
    from fedaudit.bench.scale import workload
    from fedaudit.config import scenario_from_dict
    from fedaudit.rundir import read_jsonl

    plain_file = tmp / "plain.toml"
    plain_file.write_text(scenario_from_dict(workload(clients, rounds, model)).to_toml(), encoding="utf-8")
    plain = fresh_run("scale-samples", plain_file, tmp / "plain", False)["wall"]
    rows = []
    for pop, src in pairs:
        spec = workload(clients, rounds, model)
        spec["audit"].update(population_sample=pop, source_sample=src)
        path = tmp / f"{pop}-{src}.toml"
        path.write_text(scenario_from_dict(spec).to_toml(), encoding="utf-8")
        out = tmp / f"{pop}-{src}"
        wall = fresh_run("scale-samples", path, out, True)["wall"]
        timing = read_jsonl(out / "audit" / "timing.jsonl")
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        server = summary["threat_models"]["server"]
        source = summary.get("source_inference", {})
        rows.append({"population_sample": pop, "source_sample": src, "ratio": wall / plain, "audited_wall": wall,
                     "unaudited_wall": plain, "audit_cpu": float(np.mean([t["cpu"] for t in timing[1:]])),
                     "auc": server["auc"], "tpr_at_1pct": server["tpr_at_1pct"], "clients": _client_aucs(out),
                     "source": source.get("accuracy"), "source_ci": source.get("ci"), "chance": source.get("chance")})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["mlp", "cnn"], default="cnn")
    p.add_argument("--clients", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--samples", type=_pair, nargs="+", default=[(1000, 1000), (120, 300)],
                   help="POPULATION,SOURCE pairs ([audit] population_sample, source_sample); the first is the reference")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedaudit-samples-") as tmp:
        rows = measure(args.model, args.clients, args.rounds, args.samples, Path(tmp))
    first = rows[0]["clients"]
    print(f"{args.model}, {args.clients} clients, {args.rounds} rounds (fedaudit bench scale's workload)")
    print("population,source | audited/unaudited | audit CPU s/round | server AUC, TPR@1% | per-client AUC: median, "
          "|diff| and corr. vs first | source inference [95% CI] (chance)")
    for r in rows:
        keys = sorted(set(first) & set(r["clients"]))
        a, b = np.array([first[k] for k in keys]), np.array([r["clients"][k] for k in keys])
        ok = np.isfinite(a) & np.isfinite(b)
        corr = float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")
        ci = r["source_ci"] or [float("nan")] * 2
        print(f"{r['population_sample']},{r['source_sample']} | {r['audited_wall']:.1f} / {r['unaudited_wall']:.1f} s = "
              f"{r['ratio']:.2f}x | {r['audit_cpu']:.2f} | {r['auc']:.3f}, {100 * r['tpr_at_1pct']:.1f}% | "
              f"{np.nanmedian(b):.3f}, {np.nanmean(np.abs(a - b)):.3f}, {corr:.2f} | "
              f"{100 * (r['source'] or float('nan')):.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] "
              f"({100 * (r['chance'] or float('nan')):.2f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
