"""Bad input: one line on standard error naming the problem, exit code 2, and no run directory."""

import numpy as np
import pytest

from fedaudit.cli import main

from conftest import SCENARIOS


def write_scenario(tmp_path, body: str):
    path = tmp_path / "s.toml"
    path.write_text(body)
    return path


def run_bad(tmp_path, capsys, args):
    out = tmp_path / "run"
    code = main(["run", *map(str, args), "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("fedaudit: error: ")
    assert not out.exists()
    return err[0]


def npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("body, expected", [
    ("[federation\nclients = 2", "malformed TOML"),
    ("[federation]\nclient = 2", "federation.client: unknown key"),
    ("[federation]\nclients = 0", "federation.clients: must be at least 1"),
    ("[federation]\nclients = -3", "federation.clients: must be at least 1"),
    ("[data]\ndataset = 'mnist'", "unknown dataset 'mnist'"),
    ("[model]\nname = 'resnet'", "unknown model 'resnet'"),
    ("[federation]\nstrategy = 'fedsgd'", "federation.strategy"),
    ("[model]\nname = 'cnn'", "image inputs"),
])
def test_bad_scenarios(tmp_path, capsys, body, expected):
    line = run_bad(tmp_path, capsys, [write_scenario(tmp_path, body)])
    assert expected in line


def test_more_clients_than_records(tmp_path, capsys):
    path = npz(tmp_path, x=np.random.default_rng(0).random((30, 4)), y=np.arange(30) % 3)
    body = f"[data]\ndataset = 'npz'\npath = '{path}'\n[federation]\nclients = 25"
    line = run_bad(tmp_path, capsys, [write_scenario(tmp_path, body)])
    assert "clients" in line


@pytest.mark.parametrize("arrays, expected", [
    (dict(x=np.zeros((20, 4)), y=np.zeros(19, int)), "20"),          # x and y lengths differ
    (dict(x=np.zeros((20, 4))), "'y'"),                                # labels missing
    (dict(x=np.zeros((20, 4)), y=-np.ones(20, int)), "labels must be >= 0"),  # labels out of range
])
def test_bad_data_files(tmp_path, capsys, arrays, expected):
    path = npz(tmp_path, **arrays)
    body = f"[data]\ndataset = 'npz'\npath = '{path}'\n[federation]\nclients = 2"
    line = run_bad(tmp_path, capsys, [write_scenario(tmp_path, body)])
    assert str(path) in line or "npz" in line
    assert expected in line


def test_labels_above_declared_classes(tmp_path, capsys):
    path = npz(tmp_path, x=np.zeros((20, 4)), y=np.arange(20) % 5)
    body = f"[data]\ndataset = 'npz'\npath = '{path}'\nnum_classes = 3\n[federation]\nclients = 2"
    line = run_bad(tmp_path, capsys, [write_scenario(tmp_path, body)])
    assert str(path) in line and "3" in line


def test_command_line_overrides_are_checked(tmp_path, capsys):
    line = run_bad(tmp_path, capsys, [SCENARIOS / "quickstart.toml", "--clients", "0"])
    assert "federation.clients" in line
    line = run_bad(tmp_path, capsys, [SCENARIOS / "quickstart.toml", "--set", "audit.threat_models=['x']"])
    assert "audit.threat_models" in line


def test_out_must_be_new_or_empty(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    code = main(["run", str(SCENARIOS / "quickstart.toml"), "--out", str(out), "-q"])
    assert code == 2 and "--out" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "earlier results"
