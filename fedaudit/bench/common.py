"""Shared helpers for the benchmarks: a table printer and the JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from fedaudit.errors import FedAuditError
from fedaudit.rundir import atomic_write_text, json_safe

_RUN = ("import json, resource, sys; from fedaudit.config import load_scenario; from fedaudit.run import run_scenario; "
        "run_scenario(load_scenario(sys.argv[1], {'audit.enabled': sys.argv[3] == '1'}), out=sys.argv[2], "
        "progress=False, report=False); "
        "print(json.dumps({'max_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")


def fresh_run(bench: str, scenario_file: Path, out: Path, audited: bool) -> dict:
    """One whole run of a scenario file in a fresh process (its own imports, its own Ray), up to Ray's shutdown
    (no report): {"wall": seconds, "driver_rss_mb": the driver's peak resident memory}."""
    cmd = [sys.executable, "-c", _RUN, str(scenario_file), str(out), "1" if audited else "0"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise FedAuditError(f"bench {bench}: the {'audited' if audited else 'unaudited'} run of "
                            f"{Path(scenario_file).stem} failed:\n{done.stderr[-2000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, "driver_rss_mb": float(child["max_rss_mb"])}


def report(title: str, rows: list[tuple[str, str]], figures: dict, json_path: str | None) -> dict:
    """Print ``rows`` as an aligned two-column table under ``title``; write ``figures`` to ``json_path``."""
    width = max(len(k) for k, _ in rows)
    print(title)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if json_path:
        atomic_write_text(Path(json_path), json.dumps(json_safe(figures), indent=2) + "\n")
    return figures
