"""Damaged run directories: every reader keeps every intact record and names what it skipped (file and line),
or stops with one line naming the file. No Ray here."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from fedaudit.cli import main
from fedaudit.errors import FedAuditError
from fedaudit.rundir import read_jsonl, upsert_jsonl
from conftest import REPO
from test_report import write_fake_run


def truncate_line(path, number: int) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = lines[number - 1][: len(lines[number - 1]) // 2]        # a torn line
    path.write_text("\n".join(lines) + "\n")


def test_read_jsonl_keeps_every_intact_line_and_names_the_bad_one(tmp_path, caplog):
    path = tmp_path / "rounds.jsonl"
    path.write_bytes(b'{"round": 1}\n{"round": 2, "acc\n[3]\n\xff\xfe\n{"round": 5}\n\n{"round": 6}\n')
    problems = []
    with caplog.at_level(logging.WARNING):
        rows = read_jsonl(path, problems=problems)
    assert [r["round"] for r in rows] == [1, 5, 6]
    assert [p.split(":")[0] for p in problems] == ["rounds.jsonl line 2", "rounds.jsonl line 3",
                                                   "rounds.jsonl line 4"]
    assert f"{path} line 2: not valid JSON" in caplog.text and "line 4: not UTF-8" in caplog.text
    with pytest.raises(FedAuditError, match=r"rounds.jsonl line 2: not valid JSON"):
        read_jsonl(path, strict=True)
    # a rewrite keeps the lines it cannot read, byte for byte
    upsert_jsonl(path, {"round": 4, "x": 1})
    assert [r["round"] for r in read_jsonl(path)] == [1, 4, 5, 6]
    assert b'{"round": 2, "acc\n' in path.read_bytes() and b"\xff\xfe\n" in path.read_bytes()


def test_report_counts_every_intact_round_and_names_the_torn_line(tmp_path):
    run = write_fake_run(tmp_path / "run", rounds=5)
    truncate_line(run / "rounds.jsonl", 2)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "fedaudit.cli", "report", str(run)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{run / 'rounds.jsonl'} line 2: not valid JSON" in proc.stderr
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "5 configured, 4 recorded (round 2 missing)" in html
    assert "Problems in the run directory" in html and "rounds.jsonl line 2" in html
    assert html.count("not audited") == 0                        # the four intact rounds are all in the table


@pytest.mark.parametrize("damage, named", [
    ("truncate-ledger", "ledger.npz"), ("delete-ledger", "ledger.npz: missing"),
    ("truncate-probs", "member_probs.npy"), ("truncate-summary", "summary.json"),
    ("truncate-records", "records.csv line"), ("cut-records", "cut short"), ("truncate-status", "status.json"),
])
def test_report_names_each_damaged_file(tmp_path, caplog, damage, named):
    run = write_fake_run(tmp_path / "run", rounds=3)
    (run / "status.json").write_text('{"state": "finished"}')
    what, name = damage.split("-")
    target = {"ledger": "ledger.npz", "probs": "member_probs.npy", "summary": "summary.json",
              "records": "records.csv", "status": "status.json"}[name]
    path = run / target
    data = path.read_bytes()
    if what == "delete":
        path.unlink()
    elif what == "cut":                                # the last value cut short: "0.53" of "0.534521"
        path.write_bytes(data[:-5])
    elif name == "records":                            # the last line cut inside its cells
        path.write_bytes(data[: data.rindex(b",", 0, len(data) - 12)] + b"\n")
    else:
        path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        assert main(["report", str(run)]) == 0
    assert target in caplog.text                                  # a warning naming the file
    assert named in (run / "report.html").read_text(encoding="utf-8")


def test_compare_warns_and_keeps_the_intact_rounds(tmp_path, caplog):
    from fedaudit.report.compare import build_comparison

    a, b = write_fake_run(tmp_path / "a", rounds=4, seed=1), write_fake_run(tmp_path / "b", rounds=4, seed=2)
    truncate_line(b / "rounds.jsonl", 3)
    with caplog.at_level(logging.WARNING):
        build_comparison([a, b], tmp_path / "cmp")
    assert f"{b / 'rounds.jsonl'} line 3" in caplog.text


def audited_run_dir(tmp_path, rounds=3):
    """A run dir as the auditor leaves it after ``rounds`` rounds (arrays made up; no model)."""
    from fedaudit.auditor.records import audit_records
    from fedaudit.auditor.state import save_round
    from fedaudit.schema import round_key
    from fedaudit.data import Ledger
    from fedaudit.runstate import save_checkpoint

    run = write_fake_run(tmp_path / "run", rounds=rounds, clients=3, records=300)
    ledger = Ledger.load(run / "ledger.npz")
    labels = np.random.default_rng(0).integers(0, 10, len(ledger.owner))
    records = audit_records(ledger.owner, labels, 3, folds=3, attack_fraction=0.5, seed=0)
    records.save(run / "audit" / "records.npz")
    n = len(records)
    for r in range(1, rounds + 1):
        save_round(run, r, {"round": np.int64(r), "feature_names": np.array(["loss"]),
                            round_key("participant", "features"): np.zeros((n, 1), np.float32),
                            round_key("participant", "loss"): np.ones(n, np.float32),
                            round_key("participant", "correct"): np.ones(n, bool),
                            round_key("participant", "score", "whitebox"): np.zeros(n, np.float32)})
        save_checkpoint(run, r, [np.full((2, 2), float(r))], {})
    return run


def test_aggregation_stops_with_one_line_naming_a_truncated_round(tmp_path):
    from fedaudit.auditor import aggregate_run

    run = audited_run_dir(tmp_path)
    path = run / "audit" / "round_0002.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FedAuditError) as info:
        aggregate_run(run)
    assert str(info.value).startswith(f"{path}: unreadable") and "\n" not in str(info.value)


def test_resume_sets_damaged_files_aside_and_starts_before_them(tmp_path, caplog):
    from fedaudit.config import load_scenario
    from fedaudit.run import _resume_point
    from fedaudit.runstate import checkpoint_path

    run = audited_run_dir(tmp_path, rounds=4)
    scenario = load_scenario(run / "scenario.toml", run_dir_file=True)
    assert _resume_point(run, scenario)[0] == 4                      # intact: after the last round
    # round 3's audit arrays torn, round 4's line torn, the checkpoint of round 2 torn
    p3 = run / "audit" / "round_0003.npz"
    p3.write_bytes(p3.read_bytes()[:50])
    truncate_line(run / "rounds.jsonl", 4)
    c2 = checkpoint_path(run, 2)
    c2.write_bytes(c2.read_bytes()[:30])
    with caplog.at_level(logging.WARNING):
        start, weights, _ = _resume_point(run, scenario)
    assert start == 1 and weights[0][0, 0] == 1.0                    # rounds 2-4 are redone from round 1's model
    assert (run / "audit" / "round_0003.npz.damaged").exists() and not p3.exists()
    assert (run / "checkpoints" / "round_0002.npz.damaged").exists()
    assert '"round": 4' in (run / "rounds.jsonl.damaged").read_text()
    assert [r["round"] for r in read_jsonl(run / "rounds.jsonl")] == [1]      # 2 and 3 are done again
    assert [r["round"] for r in read_jsonl(run / "rounds.jsonl.abandoned")] == [2, 3]
    for needle in ("round_0003.npz: unreadable", "rounds.jsonl line 4", "round_0002.npz: unreadable checkpoint"):
        assert needle in caplog.text, needle


def test_resume_sets_aside_what_the_interrupted_attempt_wrote_after_its_resume_point(tmp_path, caplog):
    """Rounds after the checkpoint a run resumes from are trained again from another model: the interrupted
    attempt's lines and arrays of those rounds are kept aside, not merged into the new rounds (a deviation, a failed
    client) and not taken for their audit (a round audited then would be skipped)."""
    from fedaudit.auditor.state import audited_rounds, merge_round
    from fedaudit.config import load_scenario
    from fedaudit.run import _resume_point
    from fedaudit.runstate import complete_rounds

    run = audited_run_dir(tmp_path, rounds=5)
    scenario = load_scenario(run / "scenario.toml", run_dir_file=True)
    (run / "audit" / "round_0003.npz").unlink()          # round 3's audit failed, 4 and 5 did not
    merge_round(run, 3, {"audit_error": "InvalidArgumentError()"})
    for r in (3, 4, 5):
        merge_round(run, r, {"deviation": {"isolated_client": 1}, "failed": [2]})
    done_before = audited_rounds(run, scenario.audit.threat_models)
    assert {4, 5} <= done_before                  # the old attempt audited rounds after the gap
    with caplog.at_level(logging.WARNING):
        start, weights, _ = _resume_point(run, scenario)
    assert start == 2 and weights[0][0, 0] == 2.0
    assert [r["round"] for r in read_jsonl(run / "rounds.jsonl")] == [1, 2]
    assert [r["round"] for r in read_jsonl(run / "rounds.jsonl.abandoned")] == [3, 4, 5]
    assert not (run / "audit" / "round_0004.npz").exists() and (run / "audit" / "round_0004.npz.abandoned").exists()
    assert audited_rounds(run, scenario.audit.threat_models) == {1, 2}
    assert complete_rounds(run, scenario) == {1, 2}
    merge_round(run, 4, {"round": 4, "accuracy": 0.5})                   # the new attempt's round 4
    new4 = next(r for r in read_jsonl(run / "rounds.jsonl") if r["round"] == 4)
    assert "deviation" not in new4 and "failed" not in new4
    assert "rounds 3-5 of the interrupted attempt are done again from round 2" in caplog.text


def test_resume_stops_on_damaged_audit_records(tmp_path):
    from fedaudit.config import load_scenario
    from fedaudit.run import _resume_point

    run = audited_run_dir(tmp_path)
    path = run / "audit" / "records.npz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(FedAuditError, match="records.npz: unreadable"):
        _resume_point(run, load_scenario(run / "scenario.toml", run_dir_file=True))


@pytest.mark.parametrize("setup, message", [
    ("missing", "no such run directory"),
    ("empty", "not a run directory"),
    ("finished", "finished all 3 rounds"),
    ("old-finished", "finished all 3 rounds"),          # a run dir from before status.json
])
def test_resume_bad_input_is_one_line(tmp_path, capsys, setup, message):
    run = tmp_path / "run"
    if setup == "empty":
        run.mkdir()
    elif setup != "missing":
        audited_run_dir(tmp_path)
        if setup == "finished":
            (run / "status.json").write_text(json.dumps({"state": "finished"}))
    assert main(["run", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedaudit: error: --resume") and message in err[0], err


def test_resume_refuses_a_run_that_is_still_going(tmp_path, capsys):
    from fedaudit.runstate import RunLock

    run = audited_run_dir(tmp_path)
    (run / "status.json").write_text(json.dumps({"state": "running", "attempts": [{"pid": 4242}]}))
    with RunLock(run):                                   # as a live `fedaudit run` holds it
        from fedaudit.run import resume_run

        with pytest.raises(FedAuditError, match="still going .pid 4242"):
            resume_run(run)


def test_resume_takes_the_run_dir_only(tmp_path, capsys):
    run = audited_run_dir(tmp_path)
    assert main(["run", "scenarios/quickstart.toml", "--resume", str(run), "--rounds", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drop a scenario file, --rounds" in err[0], err


def test_report_says_how_the_run_ended(tmp_path):
    run = write_fake_run(tmp_path / "run", rounds=4)
    (run / "status.json").write_text(json.dumps({
        "state": "interrupted", "signal": "SIGTERM", "interrupted_in_round": 3,
        "attempts": [{"resumed": False, "state": "interrupted"}, {"resumed": True, "state": "interrupted"}]}))
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "4 configured, 4 recorded; the run was interrupted by SIGTERM in round 3; resumed 1 time" in html
