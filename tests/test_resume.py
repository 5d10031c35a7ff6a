"""Real signals to a real `fedaudit run`: SIGINT, then SIGTERM, then SIGKILL, each followed by `--resume`; a
client actor killed mid-round on the way. The resumed run must end where an uninterrupted run of the same
seed ends."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedaudit import faults
from fedaudit.config import load_scenario

from conftest import REPO, SCENARIOS

ROUNDS = 9
KILLED = (1, ROUNDS - 1)        # client 1's actor process is killed in the last but one round (run twice: the
                                # reference and the last attempt; the earlier attempts stop before it)
KILL_PLAN = faults.FaultPlan(kill_clients={KILLED[0]: KILLED[1]})
OVERRIDES = {"federation.clients": 3, "federation.rounds": ROUNDS, "federation.local_epochs": 1,
             "federation.fraction": 1.0, "audit.enabled": True, "audit.folds": 3, "audit.inferences": [],
             "ray.num_cpus": 1}         # one client actor: fewer processes to start on each attempt
# Fields that measure time, not the audit: they differ between any two runs.
TIMING = {"wall_seconds", "audit_seconds", "train_seconds", "from_cache", "cache_dir", "parallel"}
REL, ABS = 1e-6, 1e-9           # float tolerance: resumed and uninterrupted runs compute the same numbers
STOP_SECONDS = 10               # SIGINT / SIGTERM must end the process within this
POLL_SECONDS = 240              # bound on waiting for a round to appear
LEFTOVER_SECONDS = 30           # bound on waiting for the Ray processes of a stopped run to end


def scenario_file(tmp: Path) -> Path:
    s = load_scenario(SCENARIOS / "quickstart.toml", OVERRIDES)
    path = tmp / "scenario.toml"
    path.write_text(s.to_toml())
    return path


def start(args, ray_tmp: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RAY_TMPDIR=str(ray_tmp), **KILL_PLAN.environ())
    env.pop("RAY_ADDRESS", None)
    # its own session: every Ray process it starts shares the session id (its pid), so leftovers can be found
    return subprocess.Popen([sys.executable, "-m", "fedaudit.cli", "run", *map(str, args), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def lines(run_dir: Path) -> dict:
    path = run_dir / "rounds.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return {r["round"]: r for r in rows}


def audited(run_dir: Path, round_: int) -> bool:
    row = lines(run_dir).get(round_, {})
    return "server" in row and "participant" in row and "model_accuracy" in row


def wait_until(proc, ready, what: str) -> None:
    """Poll (bounded) until ``ready()``; fail if fedaudit exits first."""
    deadline = time.monotonic() + POLL_SECONDS
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"fedaudit exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {POLL_SECONDS} s")
        time.sleep(0.1)


def resume_until_a_new_round(run_dir: Path, ray_tmp: Path):
    """Resume the run; return once it has written the line of the round after its resume point (itself, not an
    earlier attempt: the line differs from the one before it started)."""
    after = status(run_dir)["resume_after_round"]
    assert after + 1 < ROUNDS, f"the earlier attempts went too far ({after} rounds) for a stop to land mid-run"
    before = lines(run_dir).get(after + 1)
    proc = start(["--resume", run_dir], ray_tmp)
    wait_until(proc, lambda: (row := lines(run_dir).get(after + 1)) is not None and "model_accuracy" in row
               and row != before, f"a line for round {after + 1}")
    return proc, after


def session_processes(sid: int, pids: bool = False) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[4]) == sid:
                found.append(int(entry) if pids else
                             Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:100])
        except (OSError, ValueError, IndexError):
            continue
    return found


def stop_with(proc, sig) -> str:
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{sig.name} did not stop fedaudit within {STOP_SECONDS} s:\n{out[-3000:]}")
    assert proc.returncode == 128 + sig, out[-3000:]
    assert time.monotonic() - sent < STOP_SECONDS
    deadline = time.monotonic() + LEFTOVER_SECONDS      # Ray's processes end a moment after the driver
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(proc.pid) == [], f"Ray processes left behind after {sig.name}"
    return out


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def close(a, b, where="") -> None:
    """Equal JSON values, floats to REL / ABS, timing fields ignored."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) - TIMING == set(b) - TIMING, (where, sorted(set(a) ^ set(b)))
        for k in set(a) - TIMING:
            close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=REL, abs_tol=ABS), (where, a, b)
    else:
        assert a == b, (where, a, b)


def rounds(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]


def records(run_dir: Path) -> list:
    with open(run_dir / "records.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    return [rows[0]] + [[float(c) if c else math.nan for c in r] for r in rows[1:]]


@pytest.mark.ray
def test_interrupt_resume_and_a_killed_client_end_where_an_uninterrupted_run_ends(tmp_path, capsys):
    from fedaudit.run import run_scenario

    scenario = scenario_file(tmp_path)
    with faults.injected(KILL_PLAN):
        reference = run_scenario(load_scenario(scenario), out=tmp_path / "reference", progress=False,
                                 report=False)
    ref_rounds = rounds(reference)
    assert [r["round"] for r in ref_rounds] == list(range(1, ROUNDS + 1))
    # the killed client is recorded as failed in its round, and the run goes on with it afterwards
    assert ref_rounds[KILLED[1] - 1]["failed"] == [str(KILLED[0])]
    assert ref_rounds[KILLED[1] - 1]["server"]["clients_audited"] == [0, 2]
    assert all(r["clients"] == [0, 1, 2] for r in ref_rounds if r["round"] != KILLED[1])

    run_dir = tmp_path / "run"
    with tempfile.TemporaryDirectory(prefix="fa-ray-", dir="/tmp") as ray_tmp:   # short: Ray's socket paths
        # 1. SIGINT once round 1 is audited (so that the resume starts from a checkpoint, not from scratch)
        proc = start([scenario, "--out", run_dir], Path(ray_tmp))
        wait_until(proc, lambda: audited(run_dir, 1), "an audited round 1")
        out = stop_with(proc, signal.SIGINT)
        st = status(run_dir)
        assert st["state"] == "interrupted" and st["signal"] == "SIGINT", st
        assert st["interrupted_in_round"] >= 2 and st["resume_after_round"] >= 1, st
        assert f"--resume {run_dir}" in out and "interrupted by SIGINT" in out

        # 2. resume; SIGTERM as soon as it has trained a round
        proc, after = resume_until_a_new_round(run_dir, Path(ray_tmp))
        stop_with(proc, signal.SIGTERM)
        st = status(run_dir)
        assert st["state"] == "interrupted" and st["signal"] == "SIGTERM" and st["resume_after_round"] >= after, st
        assert st["attempts"][-1]["from_round"] == after

        # 3. resume; SIGKILL (no chance to clean up) as soon as it has trained a round
        proc, after = resume_until_a_new_round(run_dir, Path(ray_tmp))
        proc.kill()
        proc.communicate()
        st = status(run_dir)
        assert st["state"] == "running" and st["attempts"][-1]["from_round"] == after   # what a killed run leaves
        # Ray's node processes die with the driver; two of its agents outlive it for a minute: end them here
        deadline = time.monotonic() + 5
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in session_processes(proc.pid, pids=True):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        # 4. resume to the end
        proc = start(["--resume", run_dir], Path(ray_tmp))
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        # a resumed run ends as a run does: the headline per threat model, the accuracy, the report, the folder
        tail = out.strip().splitlines()
        assert tail[-1] == str(run_dir), out[-3000:]
        for said in ("fedaudit: honest-but-curious server: AUC ", "fedaudit: test accuracy ", "fedaudit: report: "):
            assert any(line.startswith(said) for line in tail), (said, out[-3000:])

    st = status(run_dir)
    assert st["state"] == "finished" and st["rounds_complete"] == ROUNDS
    assert [a.get("signal") for a in st["attempts"]] == ["SIGINT", "SIGTERM", None, None]
    assert [a["resumed"] for a in st["attempts"]] == [False, True, True, True]
    got = rounds(run_dir)
    assert [r["round"] for r in got] == list(range(1, ROUNDS + 1))        # every round exactly once
    close(got, ref_rounds, "rounds.jsonl")
    close(json.loads((run_dir / "summary.json").read_text()), json.loads((reference / "summary.json").read_text()),
          "summary.json")
    ref_records, got_records = records(reference), records(run_dir)
    assert got_records[0] == ref_records[0] and len(got_records) == len(ref_records)
    for a, b in zip(got_records[1:], ref_records[1:]):
        assert all((math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=REL, abs_tol=ABS)
                   for x, y in zip(a, b)), (a, b)
    timing = [json.loads(line)["round"] for line in (run_dir / "audit" / "timing.jsonl").read_text().splitlines()]
    assert sorted(timing) == list(range(1, ROUNDS + 1))                    # every round audited, none lost
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"round_{ROUNDS:04d}.npz"]

    assert (run_dir / "report.html").is_file()

    # a finished run cannot be resumed: one line, exit code 2
    from fedaudit.cli import main

    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"finished all {ROUNDS} rounds" in err[0], err
