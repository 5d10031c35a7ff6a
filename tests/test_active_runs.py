"""Adversaries that deviate from the protocol, end to end: each deviating adversary's own federation beside the
passive run of the same seed, merged into the run directory; resumed after an interruption; and model inconsistency
under secure aggregation. Each test runs two federations on a local Ray bound to 127.0.0.1 (slow)."""

import json

import numpy as np
import pytest

from fedaudit.config import load_scenario
from fedaudit.rundir import read_jsonl
from fedaudit.runstate import read_status, update_status

from conftest import SCENARIOS

TINY = {"federation.clients": 3, "federation.rounds": 2, "federation.local_epochs": 2,
        "audit.attacks": ["loss", "blackbox"], "audit.folds": 3, "audit.active.targets": 100,
        "audit.inferences": []}   # beyond membership is tested in test_inferences.py


def run(tmp_path, **overrides):
    from fedaudit.run import run_scenario

    s = load_scenario(SCENARIOS / "quickstart.toml", {**TINY, **overrides})
    return run_scenario(s, tmp_path / "run", progress=False, report=False)


@pytest.mark.ray
def test_an_active_server_runs_beside_its_passive_twin_and_resumes(tmp_path):
    run_dir = run(tmp_path, **{"audit.threat_models": ["participant", "active-server"]})
    twin = run_dir / "active" / "active-server"
    assert read_status(run_dir).state == read_status(twin).state == "finished"
    # the passive run audits the participant and the active server's passive twin; the twin only the active server
    assert set(json.loads((twin / "summary.json").read_text())["threat_models"]) == {"active-server"}
    lines = read_jsonl(run_dir / "rounds.jsonl")
    for line in lines:
        assert {"server", "participant", "active-server"} <= set(line)
        dev = line["active-server"]["deviation"]
        assert dev["targets_loss_sent"] > dev["targets_loss_before"]             # the ascent raised the targets' loss
        assert line["norms"]["honest"] is None and line["norms"]["sent"] > 0     # the passive server sent the honest
    twin_lines = read_jsonl(twin / "rounds.jsonl")
    assert all(t["norms"]["honest"] is not None and t["norms"]["sent"] != t["norms"]["honest"] for t in twin_lines)
    summary = json.loads((run_dir / "summary.json").read_text())
    entry = summary["threat_models"]["active-server"]
    assert entry["n_members"] == entry["n_nonmembers"] == 50                     # its metrics are on the targets
    comparison = entry["comparison"]
    assert comparison["passive_twin"] == "server" and comparison["targets"] == {
        "members": 50, "nonmembers": 50, "scored": {"members": 50, "nonmembers": 50}}
    assert [r["round"] for r in comparison["per_round"]] == [1, 2]
    assert all(0 <= r[k]["auc"] <= 1 for r in comparison["per_round"] for k in ("active", "passive"))
    cost = comparison["cost"]["model_accuracy"]
    assert cost["passive"] == pytest.approx(lines[-1]["model_accuracy"])
    assert cost["deviating"] == pytest.approx(twin_lines[-1]["model_accuracy"])
    before = {k: entry[k] for k in ("auc", "tpr_at_1pct")}
    from fedaudit.report import build_comparison, build_report

    build_report(run_dir)
    html = (run_dir / "report.html").read_text()
    assert "If the server deviates from the protocol" in html and 'id="deviating"' in html
    build_comparison([run_dir], tmp_path / "cmp")
    assert "Adversaries that deviate from the protocol" in (tmp_path / "cmp" / "comparison.html").read_text()

    # an interruption during the active server's run: its second round and the merge are lost
    update_status(twin, state="interrupted")
    (twin / "rounds.jsonl").write_text(json.dumps(twin_lines[0]) + "\n")
    (twin / "summary.json").unlink()
    (twin / "audit" / "round_0002.npz").unlink()
    update_status(run_dir, state="interrupted")
    summary["threat_models"].pop("active-server")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    from fedaudit.run import resume_run

    resume_run(run_dir, progress=False, report=False)
    assert read_status(run_dir).state == read_status(twin).state == "finished"
    assert [t["round"] for t in read_jsonl(twin / "rounds.jsonl")] == [1, 2]
    again = json.loads((run_dir / "summary.json").read_text())["threat_models"]["active-server"]
    # the twin restarts from its last usable checkpoint (here its start: only the final model is kept) and its
    # training is seeded per client and round: the same result
    assert {k: again[k] for k in before} == pytest.approx(before, abs=1e-6)


@pytest.mark.ray
def test_an_isolating_server_sends_its_client_its_own_model_from_the_second_round(tmp_path):
    """The isolating server's own federation: round 1 is honest (it has no model of its client yet); from round 2
    its client, on whichever node the round's draw puts it, is sent the client's own last model instead of the
    global one, and only that client is audited."""
    run_dir = run(tmp_path, **{"audit.threat_models": ["server", "isolating-server"]})
    twin = run_dir / "active" / "isolating-server"
    assert read_status(run_dir).state == read_status(twin).state == "finished"
    first, second = read_jsonl(twin / "rounds.jsonl")
    assert "deviation" not in first and first["norms"]["honest"] is None
    iso = second["deviation"]["isolated_client"]
    assert second["clients"] == [iso] and second["norms"]["sent"] != pytest.approx(second["norms"]["honest"])
    merged = read_jsonl(run_dir / "rounds.jsonl")
    assert merged[0]["isolating-server"]["deviation"] is None
    assert merged[1]["isolating-server"]["deviation"] == {"isolated_client": iso}
    assert merged[1]["isolating-server"]["clients_audited"] == [iso]


@pytest.mark.ray
def test_model_inconsistency_recovers_the_targets_update_through_secure_aggregation(tmp_path):
    run_dir = run(tmp_path, **{"federation.secure_aggregation": True, "federation.rounds": 3,
                               "audit.threat_models": ["server", "active-server"], "audit.active.inconsistent_client": 1})
    twin = run_dir / "active" / "active-server"
    lines = read_jsonl(twin / "rounds.jsonl")
    # round 1: the server does not know yet which node holds client 1 (replies name their partition)
    assert "recovered_client" not in (lines[0].get("deviation") or {})
    for line in lines[1:]:
        dev = line["deviation"]
        assert dev["inconsistent_target"] == dev["recovered_client"] == 1
        assert dev["recovered_cosine"] >= 0.99 and dev["recovered_max_abs_error"] < 1e-3   # up to quantisation
        view = line["active-server"]
        assert view["clients_audited"] == [1] and "view" not in view                      # one client's own model
    passive = read_jsonl(run_dir / "rounds.jsonl")
    assert all(p["server"]["view"] == "aggregate-only" for p in passive)
    # the others trained from an inert model: the global model pays for it, and the comparison says so
    cost = json.loads((run_dir / "summary.json").read_text())["threat_models"]["active-server"]["comparison"]["cost"]
    assert cost["model_accuracy"]["drop"] > 0
    assert not list((twin / "truth").glob("*.npz"))        # the target's true models were read and removed
    assert np.isfinite(cost["model_accuracy"]["deviating"])
