"""`flwr run simulations/flower_app`: a Flower App of one's own, run by Flower's own entry point, audited.

What flwr 1.42 needs here: a local simulation SuperLink, which `flwr run` starts itself (detached, on
127.0.0.1, HTTP API and Control API ports from FLWR_LOCAL_SUPERLINK_HTTP_API_PORT / FLWR_LOCAL_CONTROL_API_PORT,
state and logs under FLWR_HOME) and leaves running; FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 so that the
app runs in this environment instead of a per-run one that `uv sync` would build; FLWR_TELEMETRY_ENABLED=0 and
FLWR_DISABLE_UPDATE_CHECK=1 so that nothing leaves the machine. The test gives it free ports and its own FLWR_HOME,
and stops the SuperLink it started (and the processes under it) at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import REPO
from procs import free_port, stop_processes

APP = REPO / "simulations" / "flower_app"


def stop_superlink(port: int) -> None:
    """Terminate the SuperLink that `flwr run` started on ``port`` and every process under it (by pid)."""
    stop_processes(lambda cmd: any("flower-superlink" in part for part in cmd) and str(port) in cmd)


@pytest.mark.ray
def test_flwr_run_audits_the_flower_app(tmp_path):
    flwr = shutil.which("flwr")
    assert flwr, "the flwr command is not installed (fedaudit depends on flwr)"
    pyproject = (APP / "pyproject.toml").read_bytes()
    http_port, control_port = free_port(), free_port()
    out = tmp_path / "run"
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr-home"), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port), FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
               RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",   # Ray on 127.0.0.1 (README)
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    try:
        done = subprocess.run([flwr, "run", str(APP), "--run-config", f"out-dir='{out}'", "--stream"],
                              capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    finally:
        stop_superlink(http_port)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert f"fedaudit: report: {out / 'report.html'}" in log, log[-4000:]     # flwr run exits 0 even on failure
    assert (APP / "pyproject.toml").read_bytes() == pyproject      # flwr did not migrate / rewrite the app's file

    for name in ("scenario.toml", "ledger.npz", "rounds.jsonl", "clients.csv", "records.csv", "summary.json",
                 "member_probs.npy", "nonmember_probs.npy", "report.html", "model.keras"):
        assert (out / name).is_file(), name
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["clients"] == [0, 1] and r["model_accuracy"] > 0.5            # both partitions, a model that learns
        for tm in ("server", "participant"):
            assert 0.0 <= r[tm]["auc"] <= 1.0, (tm, r)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["threat_models"]) == {"server", "participant"}
    assert summary["records"]["members"] + summary["records"]["nonmembers"] == len(
        np.load(out / "member_probs.npy")) + len(np.load(out / "nonmember_probs.npy"))
    from fedaudit.config import load_scenario
    from fedaudit.data import Ledger

    scenario = load_scenario(out / "scenario.toml")
    assert scenario.federation.clients == 2 and scenario.federation.strategy == "fedavg"
    assert scenario.model.name == "keras-file" and scenario.data.dataset == "digits"
    ledger = Ledger.load(out / "ledger.npz")
    assert ledger.summary()["population"] == summary["records"]["nonmembers"]
    html = (out / "report.html").read_text()
    assert 'id="headline"' in html and "Honest-but-curious server" in html
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
