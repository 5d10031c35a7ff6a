"""The threat-model registry: a threat model registered in this file alone is validated, audited every round,
aggregated across rounds and reported, with no other code aware of it.

No Ray: the tiny federation of tests/test_auditor.py is trained in this process and handed to the auditor's core.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from fedaudit.auditor import aggregate_run
from fedaudit.auditor.views import global_model_result
from fedaudit.errors import ConfigError
from fedaudit.rundir import read_jsonl
from fedaudit.threat_model import (
    ThreatModel, get_threat_model, ordered, register_threat_model, strongest, threat_model_names,
    unregister_threat_model,
)

from test_auditor import new_core, simulate, tiny_scenario


class FirstClientSnooper(ThreatModel):
    """A toy adversary: sees only the first replying client's model each round, and attacks every record with it."""

    name = "first-client-snooper"
    title = "First-client snooper"
    description = "a toy adversary who sees one client's model each round"
    noun = "the first-client snooper"
    possessive = "the first-client snooper's"
    against = "Against the first-client snooper"
    strength = 15                      # between the participant (10) and the server (20)
    per_client_models = False
    attack_view = "participant"        # the attacks that need only one model's outputs

    def jobs(self, core, ctx):
        if not ctx.ids:
            return []
        return [core.global_job(f"snooped-{ctx.ids[0]}", ctx.clients[ctx.ids[0]])]

    def audit(self, core, ctx):
        if not ctx.ids:
            return {"attack": core.headlines[self.name], "skipped": "no client replied", "clients": []}
        model = ctx.clients[ctx.ids[0]]
        return {**global_model_result(core, ctx, self.name, model, ctx.results.get(f"snooped-{ctx.ids[0]}")),
                "snooped_client": ctx.ids[0]}


@pytest.fixture
def snooper():
    register_threat_model(FirstClientSnooper)
    yield get_threat_model(FirstClientSnooper.name)
    unregister_threat_model(FirstClientSnooper.name)


def test_the_registry_lists_the_built_in_views_strongest_first():
    out = subprocess.run([sys.executable, "-c", "from fedaudit.threat_model import threat_models; "
                          "print(' '.join(threat_models()))"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["active-server", "isolating-server", "server", "active-participant", "participant"]
    server, participant = get_threat_model("server"), get_threat_model("participant")
    assert server.per_client_models and not participant.per_client_models
    assert server.attack_view_for(secure_aggregation=True) == "participant"   # the sum is one model, as a participant's
    assert strongest(["participant", "server"]) == "server" and ordered(["x", "participant", "server"]) == \
        ["server", "participant", "x"]
    with pytest.raises(KeyError, match="registered: active-server, isolating-server, server, active-participant"):
        get_threat_model("nobody")


def test_each_deviating_adversary_runs_the_attacks_of_its_passive_twin():
    """An active adversary is compared with its passive twin on the same records: with fewer attacks it would
    look weaker than it is (the active participant ran the loss threshold alone where the participant ran the
    whitebox and blackbox attacks too)."""
    from fedaudit.auditor.attack import view_attacks
    from fedaudit.threat_model import threat_models

    configured = ["whitebox", "blackbox", "loss", "fedmia"]
    deviating = [get_threat_model(tm) for tm in threat_models() if getattr(get_threat_model(tm), "deviation", False)]
    assert {t.name for t in deviating} == {"active-server", "isolating-server", "active-participant"}
    for t in deviating:
        twin = get_threat_model(t.passive_twin)
        mine = view_attacks(configured, t.attack_view_for(False))
        assert mine == view_attacks(configured, twin.attack_view_for(False)), t.name
        assert "whitebox" in mine and "blackbox" in mine, t.name


def test_an_unregistered_threat_model_is_a_config_error_naming_the_registered_ones():
    with pytest.raises(ConfigError, match="audit.threat_models.*first-client-snooper.*allowed: active-server, isolating-server, server"):
        tiny_scenario().with_overrides({"audit.threat_models": ["first-client-snooper"]})


def test_a_threat_model_registered_here_is_audited_and_aggregated(snooper, tmp_path):
    assert threat_model_names() == ["active-server", "isolating-server", "server", "first-client-snooper",
                                    "active-participant", "participant"]
    prepared, rounds = simulate(tiny_scenario().with_overrides(
        {"audit.threat_models": ["participant", "first-client-snooper"]}))
    core = new_core(prepared, tmp_path)
    for r, previous, clients, new in rounds:
        out = core.observe(r, previous, clients, new, {"round": r})
        mine = out["first-client-snooper"]
        assert mine["snooped_client"] == 0 and mine["attack"] == out["participant"]["attack"]
        assert 0 <= mine["auc"] <= 1 and len(mine["clients"]) == 4
    lines = read_jsonl(tmp_path / "rounds.jsonl")
    assert all("first-client-snooper" in line and "participant" in line for line in lines)
    summary = aggregate_run(tmp_path)
    assert set(summary["threat_models"]) == {"participant", "first-client-snooper"}
    # the snooper is stronger than a participant: its view becomes the record-level risk
    assert summary["risk"]["threat_model"] == "first-client-snooper"
    header = (tmp_path / "records.csv").read_text().splitlines()[0].split(",")
    assert header[4:7] == ["server", "first-client-snooper", "participant"]
    with np.load(tmp_path / "audit" / "aggregated.npz") as z:
        assert z["first-client-snooper__per_round"].shape[1] == 2
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["threat_models"]["first-client-snooper"]["auc"] == summary["threat_models"]["first-client-snooper"]["auc"]
    # ... and reported: its title, who it is, and its figures, with no report code aware of it
    from fedaudit.report import build_report

    build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "First-client snooper" in html and "a toy adversary who sees one client" in html
    assert f"{summary['threat_models']['first-client-snooper']['auc']:.3f}" in html
