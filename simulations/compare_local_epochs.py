"""Sweep one setting with the Python API and compare the runs side by side.

    python simulations/compare_local_epochs.py --out runs/epochs-sweep

Loads the quickstart scenario, runs it once per value of ``federation.local_epochs`` (each run gets its own
run directory and report), then writes ``comparison.html`` beside them with
``fedaudit.report.compare.build_comparison``. The same as ``fedaudit run scenarios/suite-epochs.toml``,
spelled out in Python for when the sweep needs code (e.g. a value computed from the previous run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/epochs-sweep", help="folder for the runs and comparison.html")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args(argv)

    from fedaudit.config import load_scenario
    from fedaudit.report.compare import build_comparison
    from fedaudit.report.rundata import load_run
    from fedaudit.run import run_scenario

    base = load_scenario(REPO / "scenarios" / "quickstart.toml",
                         {"federation.rounds": args.rounds, "federation.clients": args.clients,
                          "audit.enabled": True})
    out = Path(args.out)
    run_dirs, labels = [], []
    for epochs in args.epochs:
        scenario = base.with_overrides({"federation.local_epochs": epochs})
        scenario.name = f"quickstart-epochs-{epochs}"
        run_dir = out / f"epochs-{epochs}"
        if not (run_dir / "report.html").exists():        # rerunning the script skips finished runs
            run_scenario(scenario, out=run_dir)
        run_dirs.append(run_dir)
        labels.append(f"{epochs} local epoch{'s' if epochs != 1 else ''}")

    for run_dir, label in zip(run_dirs, labels):
        run = load_run(run_dir)
        server, _ = run.headline("server")
        auc = f"{server['auc']:.3f}" if server else "not audited"
        print(f"{label:>16}: accuracy {run.final_accuracy:.3f}, server AUC {auc}")
    path = build_comparison(run_dirs, out, labels=labels, title="Local epochs: membership risk and utility")
    print(f"comparison: {path}")
    return path


if __name__ == "__main__":
    main()
