"""Scenario suites: the suite file, running every combination (with a stand-in for the federation, so no Ray),
resuming, the shipped suites, and one tiny real suite end to end through the CLI."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

from fedaudit.errors import ConfigError, FedAuditError
from fedaudit.rundir import atomic_write_text
from test_report import assert_plot_not_empty, render_in_chromium, write_fake_run

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "scenarios" / "quickstart.toml"


def write_suite(tmp_path: Path, body: str, name: str = "suite.toml") -> Path:
    path = tmp_path / name
    path.write_text(body.replace("{base}", str(QUICKSTART)), encoding="utf-8")
    return path


GRID = """
[suite]
name = "tiny"
title = "Tiny"
description = "Two partitions by two client counts."
base = "{base}"

[set]
"federation.rounds" = 2
"audit.enabled" = true

[grid]
partition = ["iid", "dirichlet:0.5"]
"federation.clients" = [3, 4]
"""


def test_grid_gives_every_combination_in_order(tmp_path):
    from fedaudit.suite import load_suite

    suite = load_suite(write_suite(tmp_path, GRID), overrides={"federation.rounds": 3, "federation.clients": 7,
                                                                "federation.seed": None})
    assert [c.label for c in suite.cases] == ["partition=iid, clients=3", "partition=iid, clients=4",
                                              "partition=dirichlet:0.5, clients=3", "partition=dirichlet:0.5, clients=4"]
    assert [c.dirname for c in suite.cases][:2] == ["01-partition-iid-clients-3", "02-partition-iid-clients-4"]
    s = suite.cases[3].scenario
    assert (s.federation.partition, s.federation.clients) == ("dirichlet:0.5", 4)   # the grid wins over --clients
    assert s.federation.rounds == 3                                                    # the command line over [set]
    assert s.audit.enabled and s.federation.local_epochs == 5                          # [set], then the base
    assert len({c.scenario.name for c in suite.cases}) == 4
    assert all(re.match(r"^[A-Za-z0-9_.-]+$", c.scenario.name) for c in suite.cases)


def test_variants_times_grid(tmp_path):
    from fedaudit.suite import load_suite

    suite = load_suite(write_suite(tmp_path, """
[suite]
base = "{base}"
[grid]
rounds = [1, 2]
[[variants]]
label = "no DP"
dp = "none"
[[variants]]
"dp.mode" = "client"
noise_multiplier = 0.7
"""))
    assert suite.name == "suite"
    assert [c.label for c in suite.cases] == ["no DP, rounds=1", "no DP, rounds=2", "mode=client, noise_multiplier=0.7, "
                                              "rounds=1", "mode=client, noise_multiplier=0.7, rounds=2"]
    assert suite.cases[2].scenario.dp.mode == "client" and suite.cases[2].scenario.dp.noise_multiplier == 0.7


@pytest.mark.parametrize("body, message", [
    ("[suite]\nbase = \"{base}\"\n[grid]\nfoo = [1, 2]\n", "grid.foo: unknown short name"),
    ("[suite]\nbase = \"{base}\"\n[grid]\npartition = [\"iid\", \"zigzag\"]\n",
     "combination 2 (partition=zigzag): federation.partition"),
    ("[suite]\nbase = \"{base}\"\n[grid]\n\"federation.colour\" = [1]\n", "federation.colour: unknown key"),
    ("[suite]\nbase = \"nowhere.toml\"\n[grid]\nclients = [2]\n", "no such scenario file"),
    ("[suite]\nbase = \"{base}\"\n", "needs a [grid] table or [[variants]]"),
    ("[suite]\nbase = \"{base}\"\nmode = \"parallel\"\n[grid]\nclients = [2]\n", "suite.mode"),
    ("[suite]\nbase = \"{base}\"\n[grid]\nclients = 3\n", "grid.clients: expected a non-empty list"),
    ("[suite]\nbase = \"{base}\"\n[gird]\nclients = [3]\n", "gird: unknown key"),
    ("[suite]\n[grid]\nclients = [3]\n", "suite.base: required"),
])
def test_bad_suites_name_the_key(tmp_path, body, message):
    from fedaudit.suite import load_suite

    with pytest.raises(ConfigError) as err:
        load_suite(write_suite(tmp_path, body))
    assert message in str(err.value) and "suite.toml" in str(err.value)


def test_shipped_suites_load():
    from fedaudit.suite import load_suite

    paths = sorted((REPO / "scenarios").glob("suite-*.toml"))
    names = {p.stem for p in paths}
    assert {"suite-partition", "suite-clients", "suite-epochs", "suite-dp"} <= names
    for path in paths:
        suite = load_suite(path)
        assert len(suite.cases) >= 2 and suite.title and suite.description, path
        assert all(c.scenario.audit.enabled for c in suite.cases), path
        assert all(c.scenario.data.dataset in ("digits", "synthetic-purchase") for c in suite.cases), path   # laptop-sized
    dp = load_suite(REPO / "scenarios" / "suite-dp.toml")
    modes = [(c.scenario.dp.mode, c.scenario.dp.noise_multiplier) for c in dp.cases]
    assert modes[0][0] == "none" and [m for m, _ in modes[1:]] == ["server", "server"]
    assert len({z for _, z in modes[1:]}) == 2                                        # two noise levels
    defences = load_suite(REPO / "scenarios" / "suite-defences.toml")
    assert {c.scenario.dp.mode for c in defences.cases} == {"none", "server", "client", "local"}
    assert {c.scenario.dp.mode for c in defences.cases if c.scenario.federation.secure_aggregation} == {"none", "client"}
    assert any(c.scenario.audit.canaries for c in defences.cases)


def test_every_shipped_scenario_that_audits_the_server_runs_the_whitebox_attack():
    """The server sees every client's model: its per-round whitebox attack (gradient norms and the update's
    cosines) is the strongest there, and a scenario or suite case without it reports the server's risk from
    weaker attacks (suite-defences.toml, no defence: the server's headline 0.98 AUC and 50% of the members at 1%
    FPR, where the blackbox attack alone reached 0.87 and 16%, the loss threshold 0.85 and 20%)."""
    from fedaudit.config import load_scenario
    from fedaudit.suite import load_suite

    scenarios = []
    for path in sorted((REPO / "scenarios").glob("*.toml")):
        if path.stem.startswith("suite-"):
            scenarios += [(f"{path.name}: {c.label}", c.scenario) for c in load_suite(path).cases]
        else:
            scenarios.append((path.name, load_scenario(path)))
    server = [(name, s) for name, s in scenarios if s.audit.enabled and "server" in s.audit.threat_models]
    assert len(server) >= 10
    assert [name for name, s in server if "whitebox" not in s.audit.attacks] == []


# --------------------------------------------------------------------------------------------------
# Running, with a stand-in for the federation
# --------------------------------------------------------------------------------------------------


def stand_in(calls: list, fail: set = frozenset()):
    """Replaces fedaudit.run.run_scenario: writes a fake run dir for the scenario and builds its report."""

    def run_scenario(scenario, out=None, progress=True, **_):
        from fedaudit.report import build_report

        calls.append(scenario.name)
        if scenario.name in fail:
            raise FedAuditError(f"{scenario.name}: federation failed (stand-in)")
        f = scenario.federation
        leak = 1.5 if f.partition.startswith("dirichlet") else 0.5
        write_fake_run(out, seed=f.clients, clients=f.clients, rounds=f.rounds, records=500, leak=leak,
                       audit=scenario.audit.enabled, name=scenario.name)
        atomic_write_text(Path(out) / "scenario.toml", scenario.to_toml())
        build_report(out)
        return Path(out)

    return run_scenario


def test_run_suite_compares_and_resumes(tmp_path, monkeypatch):
    import fedaudit.run
    from fedaudit.suite import run_suite

    calls: list = []
    suite_file = write_suite(tmp_path, GRID.replace('"federation.clients" = [3, 4]', '"federation.clients" = [3]')
                             .replace('"dirichlet:0.5"]', '"dirichlet:0.5", "shards:2"]'))
    monkeypatch.setattr(fedaudit.run, "run_scenario", stand_in(calls, fail={"quickstart-partition-shards-2-clients-3"}))
    out = run_suite(suite_file, out=tmp_path / "out", progress=False)
    assert out == tmp_path / "out" and len(calls) == 3
    meta = json.loads((out / "suite.json").read_text())
    assert [c["status"] for c in meta["cases"]] == ["done", "done", "failed"]
    assert "stand-in" in meta["cases"][2]["error"]
    html = (out / "comparison.html").read_text(encoding="utf-8")
    assert html.count('<td rowspan="2">') == 2                   # two runs, two threat models each
    assert "Runs that failed" in html and "partition=shards:2" in html
    assert "partition=iid, clients=3" in html and "Tiny" in html
    assert_plot_not_empty(out / "plots" / "compare_privacy_utility.png")
    for d in ("01-partition-iid-clients-3", "02-partition-dirichlet-0.5-clients-3"):
        assert (out / d / "report.html").is_file()
    # Again into the same folder: the finished runs are reused, the failed one is tried again.
    calls.clear()
    monkeypatch.setattr(fedaudit.run, "run_scenario", stand_in(calls))
    run_suite(suite_file, out=out, progress=False)
    assert calls == ["quickstart-partition-shards-2-clients-3"]
    meta = json.loads((out / "suite.json").read_text())
    assert [c["status"] for c in meta["cases"]] == ["reused", "reused", "done"]
    assert "Runs that failed" not in (out / "comparison.html").read_text(encoding="utf-8")


def test_an_interrupted_suite_resumes_the_combination_it_stopped_in(tmp_path, monkeypatch):
    import fedaudit.run
    from fedaudit.interrupt import Interrupted
    from fedaudit.suite import run_suite

    suite_file = write_suite(tmp_path, GRID.replace('"federation.clients" = [3, 4]', '"federation.clients" = [3]'))
    calls: list = []
    done = stand_in(calls)

    def interrupted_second(scenario, out=None, progress=True, **kw):
        if len(calls) == 1:                      # the second combination: stopped half-way by SIGTERM
            calls.append(scenario.name)
            Path(out).mkdir(parents=True)
            atomic_write_text(Path(out) / "scenario.toml", scenario.to_toml())
            atomic_write_text(Path(out) / "ledger.npz", "")
            atomic_write_text(Path(out) / "status.json", json.dumps({"state": "interrupted", "signal": "SIGTERM"}))
            raise Interrupted(15)
        return done(scenario, out, progress, **kw)

    monkeypatch.setattr(fedaudit.run, "run_scenario", interrupted_second)
    with pytest.raises(Interrupted):
        run_suite(suite_file, out=tmp_path / "out", progress=False)
    meta = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert [c["status"] for c in meta["cases"]] == ["done", "interrupted"]
    # Again: the finished combination is reused, the interrupted one resumed (not deleted and run again)
    resumed: list = []

    def resume_run(run_dir, progress=True, **_):
        resumed.append(Path(run_dir).name)
        return done(fedaudit.run.check_resumable(Path(run_dir)), run_dir, progress)   # finishes it in place

    monkeypatch.setattr(fedaudit.run, "resume_run", resume_run)
    calls.clear()
    run_suite(suite_file, out=tmp_path / "out", progress=False)
    assert resumed == ["02-partition-dirichlet-0.5-clients-3"] and calls == [
        "quickstart-partition-dirichlet-0.5-clients-3"]
    meta = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert [c["status"] for c in meta["cases"]] == ["reused", "done"]


def test_run_suite_refuses_a_foreign_folder(tmp_path):
    from fedaudit.suite import run_suite

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        run_suite(write_suite(tmp_path, GRID), out=tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_every_combination_failing_is_an_error(tmp_path, monkeypatch):
    import fedaudit.run
    from fedaudit.suite import load_suite, run_suite

    suite_file = write_suite(tmp_path, GRID)
    names = {c.scenario.name for c in load_suite(suite_file).cases}
    monkeypatch.setattr(fedaudit.run, "run_scenario", stand_in([], fail=names))
    with pytest.raises(FedAuditError, match="every combination failed"):
        run_suite(suite_file, out=tmp_path / "out", progress=False)


# --------------------------------------------------------------------------------------------------
# One real suite, end to end (the only federation run in these tests)
# --------------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_cli_runs_a_tiny_suite_end_to_end(tmp_path, monkeypatch, artifacts_dir):
    from fedaudit.cli import main

    # A private Ray temp dir: never join a Ray cluster that something else on this machine started.
    ray_tmp = tempfile.mkdtemp(prefix="fa", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    suite_file = write_suite(tmp_path, """
[suite]
name = "tiny-e2e"
title = "Tiny end-to-end suite"
description = "Digits, 3 clients, 2 rounds, audit off; one or two local epochs."
base = "{base}"
[set]
"federation.clients" = 3
"federation.rounds" = 2
"audit.enabled" = false
[grid]
local_epochs = [1, 2]
""")
    out = tmp_path / "suite"
    assert main(["run", str(suite_file), "--out", str(out), "-q"]) == 0
    dirs = ["01-local_epochs-1", "02-local_epochs-2"]
    for d in dirs:
        rounds = [json.loads(line) for line in (out / d / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rounds] == [1, 2] and rounds[-1]["model_accuracy"] > 0.3
        html = (out / d / "report.html").read_text(encoding="utf-8")
        assert "Not audited" in html and 'id="headline"' in html
        assert list((out / d / "tensorboard").glob("events.out.tfevents.*"))
    html = (out / "comparison.html").read_text(encoding="utf-8")
    assert "local epochs" in html and "Tiny end-to-end suite" in html
    assert_plot_not_empty(out / "plots" / "compare_utility.png")
    meta = json.loads((out / "suite.json").read_text())
    assert [c["status"] for c in meta["cases"]] == ["done", "done"]
    if Path("/usr/bin/chromium").exists():
        seen = render_in_chromium(out / "comparison.html", artifacts_dir / "suite-comparison.png")
        assert seen["broken"] == 0 and seen["images"] >= 1 and seen["headline-rows"] == 2
