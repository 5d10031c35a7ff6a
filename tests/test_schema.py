"""The run directory's schema (fedaudit/schema.py): each file's class reads back what it wrote, files of version 1
(``accuracy`` for both the model's and the attack's accuracy, no ``schema_version``) read in this version's names,
keys a reader does not know are kept, and the round arrays' keys split back into their parts. And the layering the
schema is part of: below the report, nothing imports the report except the entry points."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest

from fedaudit.schema import (SCHEMA_VERSION, ClientResult, DpSummary, PrivacyEstimate, RoundLine, RunStatus,
                             RunSummary, ViewResult, ViewSummary, parse_round_key, read_rounds, read_status, read_summary, round_key, update_summary,
                             write_status, write_summary)

PACKAGE = Path(__file__).resolve().parent.parent / "fedaudit"


def view(auc=0.71, **kw) -> ViewResult:
    return ViewResult(attack="loss", auc=auc, tpr_at_1pct=0.04, tpr_at_0_1pct=None, attack_accuracy=0.62,
                      summary={"auc": auc, "auc_ci": [0.6, 0.8], "attack_accuracy": 0.62, "n_members": 50},
                      attacks={"loss": {"auc": auc}}, records={"members": 50, "nonmembers": 60},
                      clients=[ClientResult(client=0, records=20, auc=0.8, attack_accuracy=0.7),
                               ClientResult(client=1, records=30, auc=0.6)], **kw)


# ---- round trips ----------------------------------------------------------------------------------------------

def test_a_round_line_round_trips():
    line = RoundLine(round=3, model_accuracy=0.81, loss=0.5, train_loss=0.4, clients=[0, 1], failed=["x"],
                     non_finite_clients=[1], wall_seconds=2.5, audit_seconds=1.0,
                     views={"server": view(source_inference={"accuracy": 0.4}), "participant": view(0.55)})
    data = json.loads(json.dumps(line.to_dict()))
    assert data["model_accuracy"] == 0.81 and "accuracy" not in data and data["schema_version"] == SCHEMA_VERSION
    assert data["server"]["attack_accuracy"] == 0.62 and data["server"]["clients"][0]["attack_accuracy"] == 0.7
    back = RoundLine.from_dict(data)
    assert back == line
    assert back.view("server").source_inference == {"accuracy": 0.4} and back.view("nobody") is None


def test_a_view_result_round_trips_and_keeps_its_optional_fields_out_when_unset():
    v = view()
    data = v.to_dict()
    assert not {"skipped", "view", "clients_audited", "source_inference"} & set(data)
    assert ViewResult.from_dict(data) == v
    skipped = ViewResult(attack="loss", skipped="no client replied")
    assert ViewResult.from_dict(skipped.to_dict()) == skipped and skipped.headline_numbers()["auc"] is None
    assert v.value("auc") == 0.71 and v.interval("auc") == (0.6, 0.8) and v.value("n_members") == 50


def test_a_run_summary_round_trips():
    summary = RunSummary(
        threat_models={"server": ViewSummary(metrics={"auc": 0.7, "auc_ci": [0.6, 0.8], "attack_accuracy": 0.6},
                                             attack="stacked", headline="loss", rounds=[1, 2],
                                             aggregations={"max": {"auc": 0.72}}, view="aggregate-only")},
        rounds=[1, 2], attack="stacked", records={"members": 10}, risk={"auc": 0.7, "threat_model": "server"},
        source_inference={"accuracy": 0.5, "chance": 0.25}, secure_aggregation={"server_view": "aggregate-only"},
        slices={"server": []}, classes=[0, 1], dp={"mode": "server"}, privacy={"server": {"delta": 1e-5}})
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["threat_models"]["server"]["auc"] == 0.7 and data["threat_models"]["server"]["view"] == "aggregate-only"
    back = RunSummary.from_dict(data)
    assert back == summary
    assert back.view("server").value("auc") == 0.7 and back.view("server").interval("auc") == (0.6, 0.8)


def test_the_dp_and_privacy_objects_read_typed():
    summary = RunSummary.from_dict({
        "dp": {"mode": "server", "noise_multiplier": 1.0, "accountant_epsilon": None, "new_setting": 3},
        "privacy": {"server": {"accountant_epsilon": None, "canary_epsilon": None, "canary_epsilon_ci": None,
                               "mia_epsilon_lower": 0.4, "delta": 1e-5, "accountant_note": "central DP",
                               "per_client": [{"client": 0, "rounds": 2}]},
                    "participant": {"accountant_epsilon": None, "canary_epsilon": None, "canary_epsilon_ci": None,
                                    "mia_epsilon_lower": None, "delta": None},
                    "utility": {"accuracy": 0.9}}})
    dp = summary.dp_summary()
    assert dp.mode == "server" and dp.accountant_epsilon is None and dp.extra == {"new_setting": 3}
    assert DpSummary.from_dict(dp.to_dict()) == dp
    assert summary.privacy_threat_models() == ["server", "participant"]
    server = summary.privacy_of("server")
    assert server.measures_anything and server.per_client == [{"client": 0, "rounds": 2}]
    assert not summary.privacy_of("participant").measures_anything and summary.privacy_of("nobody") is None
    assert PrivacyEstimate.from_dict(server.to_dict()) == server
    assert set(summary.privacy_of("participant").to_dict()) == set(PrivacyEstimate._ALWAYS)
    assert RunSummary().dp_summary() is None and RunSummary().privacy_threat_models() == []


def test_a_run_status_round_trips():
    status = RunStatus(state="interrupted", rounds=5, rounds_complete=2, resume_after_round=2, signal="SIGTERM",
                       interrupted_in_round=3, attempts=[{"resumed": False}, {"resumed": True}], updated=12.5)
    back = RunStatus.from_dict(json.loads(json.dumps(status.to_dict())))
    assert back == status and back.resumes == 1 and not back.finished


def test_the_files_are_written_and_read_through_the_schema(tmp_path, caplog):
    write_summary(tmp_path, RunSummary(attack="loss"))
    assert read_summary(tmp_path).attack == "loss"
    assert update_summary(tmp_path, dp={"mode": "local"}, something_new=1).dp == {"mode": "local"}
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["dp"] == {"mode": "local"} and on_disk["something_new"] == 1
    write_status(tmp_path, RunStatus(state="finished"))
    assert read_status(tmp_path).finished
    assert read_status(tmp_path / "absent").state is None and read_summary(tmp_path / "absent") is None
    # damaged files: named, and read as absent
    (tmp_path / "summary.json").write_text("[1, 2]")
    (tmp_path / "status.json").write_text('{"state": ')
    problems = []
    with caplog.at_level(logging.WARNING):
        assert read_summary(tmp_path, problems) is None and read_status(tmp_path, problems).state is None
    assert [p.split(":")[0] for p in problems] == ["summary.json", "status.json"]
    # rounds.jsonl: a torn line and a line without a round number are left out and named
    (tmp_path / "rounds.jsonl").write_text('{"round": 1, "model_accuracy": 0.5}\n{"round": 2, "mod\n'
                                           '{"model_accuracy": 0.7}\n{"round": 3, "accuracy": 0.6}\n')
    problems = []
    lines = read_rounds(tmp_path, problems)
    assert [(line.round, line.model_accuracy) for line in lines] == [(1, 0.5), (3, 0.6)]
    assert len(problems) == 2 and problems[0].startswith("rounds.jsonl line 2")


# ---- version 1 -------------------------------------------------------------------------------------------------

def test_a_version_1_round_line_reads_with_both_accuracies_split():
    old = {"round": 2, "accuracy": 0.83, "loss": 0.4, "clients": [0, 1], "accuracy_without_canaries": 0.8,
           "server": {"attack": "loss", "auc": 0.7, "accuracy": 0.64,
                      "summary": {"auc": 0.7, "accuracy": 0.64, "accuracy_ci": [0.6, 0.7]},
                      "clients": [{"client": 0, "auc": 0.9, "accuracy": 0.75, "peak": 2}]},
           "participant": {"attack": "loss", "skipped": "no global model"}}
    line = RoundLine.from_dict(old)
    assert line.schema_version == 1 and line.model_accuracy == 0.83
    server = line.view("server")
    assert server.attack_accuracy == 0.64 and server.summary["attack_accuracy"] == 0.64
    assert server.summary["attack_accuracy_ci"] == [0.6, 0.7] and "accuracy" not in server.summary
    assert server.clients[0].attack_accuracy == 0.75 and server.clients[0].extra == {"peak": 2}
    assert line.view("participant").skipped == "no global model"
    assert line.extra == {"accuracy_without_canaries": 0.8}
    new = line.to_dict()
    assert new["schema_version"] == 2 and new["model_accuracy"] == 0.83 and "accuracy" not in new
    assert new["accuracy_without_canaries"] == 0.8 and new["server"]["clients"][0]["peak"] == 2


def test_a_version_1_summary_and_status_read():
    old = {"threat_models": {"server": {"auc": 0.7, "accuracy": 0.61, "epsilon_lower": 1.2, "roc": {"fpr": [0.1]},
                                        "attack": "stacked"}},
           "attack": "stacked", "source_inference": {"accuracy": 0.4, "chance": 0.2},
           "risk": {"auc": 0.7, "accuracy": 0.6, "threat_model": "server"}, "written_by": "an older fedaudit"}
    summary = RunSummary.from_dict(old)
    assert summary.schema_version == 1 and summary.attack == "stacked"
    server = summary.view("server")
    assert server.headline_numbers()["attack_accuracy"] == 0.61 and server.value("epsilon_lower") == 1.2
    assert server.extra == {"roc": {"fpr": [0.1]}} and server.attack == "stacked"
    assert summary.risk["attack_accuracy"] == 0.6 and summary.risk["threat_model"] == "server"
    assert summary.source_inference == {"accuracy": 0.4, "chance": 0.2}     # the source's accuracy is not renamed
    assert summary.extra == {"written_by": "an older fedaudit"}
    again = summary.to_dict()
    assert again["written_by"] == "an older fedaudit" and again["threat_models"]["server"]["roc"] == {"fpr": [0.1]}
    status = RunStatus.from_dict({"state": "finished", "rounds": 3, "attempts": [{"pid": 1}], "host_note": "x"})
    assert status.schema_version == 1 and status.finished and status.extra == {"host_note": "x"}
    assert status.to_dict()["host_note"] == "x" and status.to_dict()["schema_version"] == 2


def test_unknown_keys_are_kept_through_every_class():
    line = RoundLine.from_dict({"round": 1, "model_accuracy": 0.5, "new_field": [1],
                                "server": {"attack": "loss", "auc": 0.6, "new_metric": 3.0}})
    assert line.to_dict()["new_field"] == [1] and line.to_dict()["server"]["new_metric"] == 3.0
    assert ClientResult.from_dict({"client": 2, "novel": "y"}).to_dict()["novel"] == "y"
    assert ViewSummary.from_dict({"auc": 0.5, "comment": "z"}).to_dict()["comment"] == "z"


# ---- round arrays ----------------------------------------------------------------------------------------------

def test_round_keys_join_and_split():
    assert round_key("server", "score", "loss") == "server__score__loss"
    assert parse_round_key(round_key("participant", "member")) == ("participant", "member")
    for bad in (("server", ""), ("ser__ver", "x"), ("", "x")):
        with pytest.raises(ValueError):
            round_key(*bad)


# ---- layering --------------------------------------------------------------------------------------------------

REPORT_IMPORTERS = {"fedaudit/cli.py", "fedaudit/run.py", "fedaudit/suite.py", "fedaudit/frontier.py"}


def _report_imports(path: Path) -> list[int]:
    """Line numbers of the statements in ``path`` (at module level or inside a function) that import from
    fedaudit.report, absolute or relative."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        if any(n == "fedaudit.report" or n.startswith("fedaudit.report.") for n in names):
            out.append(node.lineno)
    return out


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    module = PACKAGE / "report" / "console.py"
    assert _report_imports(module)                     # from fedaudit.report.fmt import ... (module level)
    assert _report_imports(PACKAGE / "run.py")         # inside functions only


def test_only_the_entry_points_import_the_report():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel.startswith("fedaudit/report/") or rel in REPORT_IMPORTERS:
            continue
        lines = _report_imports(path)
        if lines:
            offenders[rel] = lines
    assert offenders == {}
