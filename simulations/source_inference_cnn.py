"""Source inference (which client holds a member) on a convolutional federation: digits as 8x8 images, the `cnn`
model, the server's view. Per seed, one audited run; prints the calibrated and the lowest-loss attribution accuracy
(with 95% intervals), chance, the server's membership AUC and the audit's seconds per round.

    python simulations/source_inference_cnn.py --clients 20 --rounds 4 --seeds 0 1 2 3 4 --source-gradients dense
    python simulations/source_inference_cnn.py --clients 20 --rounds 4 --seeds 0 1 2 3 4 --source-gradients all

The source sample is scored under every client's model each round, the largest share of a round's work; by default
(``[audit] source_gradients = "dense"``) its features leave out the convolutions' gradient norms
(:meth:`fedaudit.auditor.features.ModelProbe.source_view`); "all" keeps them. The two commands show what that costs
the attribution and what it saves in the signals' seconds per round.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def scenario(clients: int, rounds: int, seed: int, source_gradients: str = "dense") -> dict:
    return {"name": f"source-cnn-{clients}-{seed}",
            "data": {"dataset": "digits", "image": True, "population_fraction": 0.2, "test_fraction": 0.1},
            "model": {"name": "cnn"},
            "federation": {"clients": clients, "rounds": rounds, "local_epochs": 3, "batch_size": 16,
                           "learning_rate": 0.003, "optimizer": "adam", "seed": seed},
            "audit": {"enabled": True, "threat_models": ["server"], "attacks": ["whitebox", "loss"],
                      "inferences": [], "source_gradients": source_gradients}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--source-gradients", choices=["dense", "all"], default="dense")
    args = p.parse_args(argv)

    from fedaudit.config import scenario_from_dict
    from fedaudit.run import run_scenario
    from fedaudit.rundir import read_jsonl

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            s = scenario_from_dict(scenario(args.clients, args.rounds, seed, args.source_gradients))
            run_dir = run_scenario(s, out=Path(tmp) / f"seed-{seed}", progress=False, report=False)
            summary = json.loads((run_dir / "summary.json").read_text())
            src = summary.get("source_inference") or {}
            timing = read_jsonl(run_dir / "audit" / "timing.jsonl")
            rows.append({"seed": seed, "calibrated": src.get("accuracy"), "ci": src.get("ci"),
                         "lowest_loss": (src.get("lowest_loss") or {}).get("accuracy"),
                         "lowest_loss_ci": (src.get("lowest_loss") or {}).get("ci"),
                         "chance": src.get("chance"), "records": src.get("records"),
                         "server_auc": summary["threat_models"]["server"].get("auc"),
                         "signals_s": float(np.mean([t["signals"] for t in timing[1:]] or [np.nan]))})
    fmt = lambda v: "-" if v is None else f"{v:.3f}"        # noqa: E731
    ci = lambda c: "" if not c or c[0] is None else f" [{c[0]:.3f}, {c[1]:.3f}]"      # noqa: E731
    print(f"{'seed':>4}  {'calibrated':>24}  {'lowest loss':>24}  chance  records  server AUC  signals s/round")
    for r in rows:
        print(f"{r['seed']:>4}  {fmt(r['calibrated']) + ci(r['ci']):>24}  "
              f"{fmt(r['lowest_loss']) + ci(r['lowest_loss_ci']):>24}  {fmt(r['chance'])}  {r['records']:>7}  "
              f"{fmt(r['server_auc']):>10}  {r['signals_s']:.2f}")
    cal = [r["calibrated"] for r in rows if r["calibrated"] is not None]
    low = [r["lowest_loss"] for r in rows if r["lowest_loss"] is not None]
    print(f"mean  calibrated {np.mean(cal):.3f}, lowest loss {np.mean(low):.3f} over {len(rows)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
