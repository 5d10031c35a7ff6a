"""The privacy-utility frontier: the target's grammar, the search (with a stand-in for the federation whose leak falls
with the defence's strength, so no Ray), resuming, frontier.json's verdict and frontier.html in headless Chromium."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedaudit.errors import ConfigError
from fedaudit.rundir import atomic_write_text
from test_report import assert_plot_not_empty, needs_chromium, render_in_chromium, write_fake_run

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "scenarios" / "quickstart.toml"


# --------------------------------------------------------------------------------------------------
# The target
# --------------------------------------------------------------------------------------------------


def test_targets_parse():
    from fedaudit.frontier import parse_target

    t = parse_target("server.tpr_at_1pct <= 0.02")
    assert (t.threat_model, t.metric, t.op, t.value) == ("server", "tpr_at_1pct", "<=", 0.02)
    assert t.met(0.02) and not t.met(0.021) and not t.met(math.nan)
    assert parse_target(" participant.auc<0.55 ").met(0.549)
    assert parse_target("epsilon_lower <= 1").threat_model is None
    assert parse_target("accountant_epsilon <= 8").metric == "accountant_epsilon"


@pytest.mark.parametrize("text, named", [
    ("server.tpr_at_1pct >= 0.02", "operators: <=, <"),
    ("serverr.auc <= 0.6", "unknown threat model 'serverr'"),
    ("server.aucc <= 0.6", "unknown metric 'aucc'"),
    ("auc <= 0.6", "'auc' needs a threat model"),
    ("__import__('os').system('x') <= 1", "not understood"),
    ("server.auc <= 0.6; rm", "not understood"),
])
def test_bad_targets_name_what_is_allowed(text, named):
    from fedaudit.frontier import parse_target

    with pytest.raises(ConfigError) as err:
        parse_target(text)
    assert named in str(err.value) and "tpr_at_1pct" in str(err.value) and "server" in str(err.value)


def test_bad_frontier_files_name_the_key(tmp_path):
    from fedaudit.frontier import load_frontier

    for body, named in [('defences = ["nope"]', "frontier.defences"), ("repeats = 0", "frontier.repeats"),
                        ("colour = 1", "frontier.colour: unknown key"), ("[frontier.grid]\nlocal_dp = [-1]",
                                                                          "frontier.grid.local_dp")]:
        path = tmp_path / "f.toml"
        path.write_text(f'[frontier]\nbase = "{QUICKSTART}"\n{body}\n', encoding="utf-8")
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            load_frontier(path)


# --------------------------------------------------------------------------------------------------
# The search, with a stand-in federation
# --------------------------------------------------------------------------------------------------

FRONTIER = """
[frontier]
base = "{base}"
target = "server.tpr_at_1pct <= 0.15"
defences = ["local_dp", "central_dp", "local_epochs"]
refine = 1

[frontier.grid]
local_dp = [0.01, 0.1, 1.0]
central_dp = [0.5, 2.0]

[frontier.set]
"federation.clients" = 3
"federation.rounds" = 2
"federation.local_epochs" = 6
"""


def _leak(scenario) -> tuple[float, float]:
    """(leak, accuracy scale) of the stand-in: local DP's noise and fewer epochs lower both; central DP leaves the
    server's view as it is (it sees each update before the noise)."""
    dp, f = scenario.dp, scenario.federation
    leak, scale = 2.5 * f.local_epochs / 6, 0.8 + 0.2 * f.local_epochs / 6
    if dp.mode == "local":
        leak /= 1 + 40 * dp.noise_multiplier
        scale *= 1 - 0.3 * min(1.0, dp.noise_multiplier)
    return leak, scale


def stand_in(calls: list):
    def run_scenario(scenario, out=None, progress=True, **_):
        calls.append(scenario.name)
        leak, scale = _leak(scenario)
        write_fake_run(out, seed=scenario.federation.seed, clients=3, rounds=scenario.federation.rounds, records=500,
                       leak=leak, accuracy_scale=scale, threat_models=("server",), name=scenario.name,
                       write_records=False, write_clients=False, write_probs=False, state="finished")
        atomic_write_text(Path(out) / "scenario.toml", scenario.to_toml())
        atomic_write_text(Path(out) / "report.html", "<html></html>")   # the stand-in's runs have no report
        return Path(out)

    return run_scenario


@pytest.fixture(scope="module")
def frontier(tmp_path_factory):
    import fedaudit.run
    from fedaudit.frontier import run_frontier

    tmp = tmp_path_factory.mktemp("frontier")
    path = tmp / "frontier.toml"
    path.write_text(FRONTIER.replace("{base}", str(QUICKSTART)), encoding="utf-8")
    calls: list = []
    mp = pytest.MonkeyPatch()
    mp.setattr(fedaudit.run, "run_scenario", stand_in(calls))
    try:
        out = run_frontier(path, out=tmp / "out", progress=False)
        first = list(calls)
        calls.clear()
        run_frontier(path, out=out, progress=False)          # again: every run is reused
    finally:
        mp.undo()
    return out, path, first, list(calls)


def test_the_search_runs_grid_then_refines_where_the_target_is_crossed(frontier):
    out, _, calls, _ = frontier
    result = json.loads((out / "frontier.json").read_text())
    stages = {p["label"]: p["stage"] for p in result["points"]}
    assert stages["no defence"] == "baseline"
    local = sorted((p["value"], p["meets"]) for p in result["points"] if p["defence"] == "local_dp")
    # the coarse grid crosses the target between two of its values; one bisection point lies between them
    coarse = [v for v, _ in local if v in (0.01, 0.1, 1.0)]
    assert coarse == [0.01, 0.1, 1.0]
    refined = [p for p in result["points"] if p["stage"] == "refine"]
    assert refined, stages
    met = [v for v, m in local if m]
    missed = [v for v, m in local if not m]
    assert missed and met and max(missed) < min(met)              # monotone in this stand-in
    # central DP does not cover the server: only its strongest setting ran
    central = [p for p in result["points"] if p["defence"] == "central_dp"]
    assert [p["value"] for p in central] == [2.0] and central[0]["stage"] == "strongest"
    assert "central DP" in result["uncovered"]
    assert len(calls) == len(result["points"])                    # one seed each, nothing run twice


def test_the_cheapest_configuration_meets_the_target_with_the_best_accuracy(frontier):
    out, _, _, _ = frontier
    result = json.loads((out / "frontier.json").read_text())
    meeting = [p for p in result["points"] if p["meets"]]
    best = next(p for p in result["points"] if p["label"] == result["cheapest"])
    assert best["meets"] and best["target_value"] <= 0.15
    assert best["accuracy"]["mean"] == max(p["accuracy"]["mean"] for p in meeting)
    assert not next(p for p in result["points"] if p["defence"] == "none")["meets"]
    # the Pareto front: no point on it is beaten on both risk and accuracy by another
    front = [p for p in result["points"] if p["label"] in result["pareto"]]
    assert front
    for p in front:
        assert not any(q["target_value"] < p["target_value"] and q["accuracy"]["mean"] > p["accuracy"]["mean"]
                       for q in result["points"])
    # a DP point carries the accountant's epsilon beside the measured one
    dp = next(p for p in result["points"] if p["defence"] == "local_dp")
    assert "epsilon_lower" in dp["risk"]["server"]


def test_a_frontier_run_again_skips_every_finished_run(frontier):
    out, _, _, again = frontier
    assert again == []
    meta = json.loads((out / "suite.json").read_text())
    assert {c["status"] for c in meta["cases"]} == {"reused"}


def test_no_configuration_meeting_the_target_is_said(tmp_path):
    from fedaudit.report.frontier import verdict

    point = {"label": "no defence", "defence": "none", "accuracy": {"mean": 0.9}, "target_value": 0.3, "meets": False,
             "meets_every_seed": False, "risk": {}, "accountant_epsilon": None}
    result = {"points": [point], "target": {"text": "server.tpr_at_1pct <= 0.02", "threat_model": "server",
                                            "metric": "tpr_at_1pct", "op": "<=", "value": 0.02},
              "baseline": "no defence", "cheapest": None, "repeats": 1, "uncovered": []}
    text = " ".join(verdict(result))
    assert "No configuration tried meets the target" in text and "not met" in text
    useless = dict(point, label="local DP", defence="local_dp", accuracy={"mean": 0.11}, target_value=0.01, meets=True,
                   meets_every_seed=True)
    text = " ".join(verdict(dict(result, points=[point, useless], cheapest="local DP")))
    assert "The cheapest configuration that meets the target is local DP" in text
    assert "less than half of its undefended accuracy" in text


@needs_chromium
def test_frontier_html_renders_in_chromium(frontier, artifacts_dir):
    out, _, _, _ = frontier
    html = (out / "frontier.html").read_text(encoding="utf-8")
    assert "The cheapest configuration that meets the target is local DP" in html
    assert "Accountant &epsilon; = " in html and "attack measured &epsilon; &ge; " in html
    assert_plot_not_empty(out / "plots" / "frontier.png")
    seen = render_in_chromium(out / "frontier.html", artifacts_dir / "frontier.png")
    assert seen["broken"] == 0 and seen["images"] == 1 and seen["external"] == 0


def test_where_no_setting_meets_the_target_the_search_goes_beyond_the_strongest(tmp_path):
    from fedaudit.frontier import coarse_configs, load_frontier, refine_configs

    path = tmp_path / "f.toml"
    path.write_text(f'[frontier]\nbase = "{QUICKSTART}"\ndefences = ["local_dp", "central_dp", "local_epochs"]\n'
                    '[frontier.grid]\nlocal_dp = [0.01, 0.1]\nlocal_epochs = [3, 2]\n', encoding="utf-8")
    spec = load_frontier(path)
    configs = coarse_configs(spec)
    missed = {c.label: {"meets": False} for c in configs}
    more = {c.defence: (c.value, c.stage) for c in refine_configs(spec, configs, missed)}
    # noise a half decade beyond the strongest, half the epochs; central DP does not cover the server: no step
    assert more == {"local_dp": (0.316, "extend"), "local_epochs": (1, "extend")}
    met = dict(missed, **{c.label: {"meets": True} for c in configs if c.value in (0.1, 2)})
    more = {c.defence: (c.value, c.stage) for c in refine_configs(spec, configs, met)}
    assert more == {"local_dp": (0.0316, "refine")}          # 3 and 2 epochs are adjacent: nothing between them
