"""TensorBoard for real: a run's scalars, written with the tensorboard package, served by `tensorboard` itself.

The test starts `tensorboard --logdir ... --host 127.0.0.1 --port FREE` and reads the scalars back over its
HTTP API (``/data/plugin/scalars/...``), with a bounded wait for the server to load the files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from fedaudit.report.rundata import load_run
from fedaudit.report.tensorboard import read_scalars, write_scalars
from fedaudit.rundir import atomic_write_text
from fedaudit.schema import RoundLine, ViewResult

from procs import free_port

ROUNDS = [
    RoundLine(round=1, model_accuracy=0.61, loss=1.2, train_loss=1.4,
              views={"server": ViewResult(auc=0.55, tpr_at_1pct=0.02),
                     "participant": ViewResult(auc=0.52, tpr_at_1pct=None)}).to_dict(),
    RoundLine(round=2, model_accuracy=0.74, loss=0.8, train_loss=0.9,
              views={"server": ViewResult(auc=0.63, tpr_at_1pct=0.05),
                     "participant": ViewResult(auc=0.57, tpr_at_1pct=0.01)}).to_dict(),
]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read().decode())


def make_run(path):
    path.mkdir(parents=True)
    atomic_write_text(path / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in ROUNDS))
    return path


def test_scalars_round_trip_without_tensorflow(tmp_path):
    code = ("import sys, json; from fedaudit.report.rundata import load_run; "
            "from fedaudit.report.tensorboard import write_scalars, read_scalars; "
            f"p = write_scalars(load_run({str(make_run(tmp_path / 'run'))!r}), {str(tmp_path / 'tb')!r}); "
            "print(json.dumps(read_scalars(p))); print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    scalars, imported_tf = out.stdout.strip().splitlines()
    assert imported_tf == "False"
    scalars = json.loads(scalars)
    assert scalars["server/auc"] == [[1, pytest.approx(0.55)], [2, pytest.approx(0.63)]]
    assert [s for s, _ in scalars["participant/tpr_at_1pct"]] == [2]      # None in round 1: no fake value
    # writing again replaces the file: TensorBoard shows one run, not two
    write_scalars(load_run(tmp_path / "run"), tmp_path / "tb")
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


def test_tensorboard_serves_the_scalars(tmp_path):
    exe = shutil.which("tensorboard")
    if exe is None:
        pytest.fail("the tensorboard command is not installed (fedaudit depends on the tensorboard package)")
    logdir = tmp_path / "logs"
    path = write_scalars(load_run(make_run(tmp_path / "run")), logdir / "quickstart")
    assert read_scalars(path)["utility/accuracy"] == [(1, pytest.approx(0.61)), (2, pytest.approx(0.74))]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tags = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags").get("quickstart", {})
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                tags = {}
            if "server/auc" in tags:
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"tensorboard exited: {proc.stderr.read()[-2000:]}"
        assert {"utility/accuracy", "utility/loss", "server/auc", "participant/auc"} <= set(tags), tags
        query = urllib.parse.urlencode({"run": "quickstart", "tag": "server/auc"})
        points = get_json(f"{base}/data/plugin/scalars/scalars?{query}")   # [[wall_time, step, value], ...]
        assert [p[1] for p in points] == [1, 2]
        assert [p[2] for p in points] == [pytest.approx(0.55), pytest.approx(0.63)]
        query = urllib.parse.urlencode({"run": "quickstart", "tag": "participant/tpr_at_1pct"})
        assert [p[1] for p in get_json(f"{base}/data/plugin/scalars/scalars?{query}")] == [2]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
