"""A suite on a Ray cluster: a two-node cluster on this machine's loopback, a suite in ``ray`` mode whose two tiny runs land one on each node, and the same
results as the runs give one after another on one machine."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import REPO

SUITE = """
[suite]
name = "cluster"
base = "{base}"
mode = "ray"
cpus_per_run = 1

[set]
"federation.clients" = 2
"federation.rounds" = 1
"federation.local_epochs" = 1
"audit.enabled" = false
"ray.client_cpus" = 1.0

[grid]
seed = [0, 1]
"""


def _rounds(run_dir: Path) -> list[dict]:
    return [{k: r[k] for k in ("round", "clients", "model_accuracy", "loss", "train_loss")}
            for r in map(json.loads, (run_dir / "rounds.jsonl").read_text().splitlines())]


@pytest.mark.ray
def test_a_suite_runs_on_both_nodes_of_a_cluster_as_it_runs_on_one_machine(tmp_path, monkeypatch):
    """Two nodes on 127.0.0.1, each with one CPU and a resource of its own. ``ray start --address`` cannot start the
    second one on the loopback (with multi-node off it refuses to join, with it on it replaces 127.0.0.1 by the
    machine's network address), so the nodes are started as Ray's own multi-node tests start them
    (``ray.cluster_utils.Cluster``), with multi-node off in this process and every Ray process it starts."""
    import ray
    from ray.cluster_utils import Cluster

    from fedaudit.federation.runtime import pin_loopback
    from fedaudit.run import run_scenario
    from fedaudit.suite import load_suite, run_suite

    ray_tmp = tempfile.mkdtemp(prefix="fa", dir="/tmp")           # short: Ray's socket paths live under it
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)                     # never join or advertise a Ray of anyone else
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every node's processes stay on 127.0.0.1
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    pin_loopback()
    os.makedirs(os.path.join(ray_tmp, "ray"))                     # where Ray notes the cluster's address
    node = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "temp_dir": os.path.join(ray_tmp, "ray"),
            "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "resources": {"head_node": 1}})
    try:
        cluster.add_node(**node, resources={"second_node": 1})
        suite_file = tmp_path / "suite.toml"
        suite_file.write_text(SUITE.replace("{base}", str(REPO / "scenarios" / "quickstart.toml")), encoding="utf-8")
        out = run_suite(suite_file, out=tmp_path / "suite", overrides={"ray.address": cluster.address},
                        progress=False)
        meta = json.loads((out / "suite.json").read_text())
        assert [c["status"] for c in meta["cases"]] == ["done", "done"], meta
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="ERROR")
        try:
            nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        finally:
            ray.shutdown()
        ran_on = [nodes[c["node"]] for c in meta["cases"]]
        assert {("head_node" in r, "second_node" in r) for r in ran_on} == {(True, False), (False, True)}
    finally:
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    # the first run again, on this machine alone: the same rounds
    case = load_suite(suite_file).cases[0]
    alone = run_scenario(case.scenario, out=tmp_path / "alone", progress=False, report=False)
    assert _rounds(alone) == _rounds(out / case.dirname)
