"""`fedaudit audit-model`: one saved Keras model, its training records and others, audited from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fedaudit.cli import main

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small softmax model overfit on 200 digits, saved as .keras, and its data in three formats."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("own-model")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(y))
    members, nonmembers, population = order[:200], order[200:500], order[500:1100]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[members], y[members], epochs=80, batch_size=16, verbose=0)
    model.save(folder / "model.keras")
    np.savez(folder / "members.npz", x=x[members], y=y[members])
    np.savetxt(folder / "nonmembers.csv", np.c_[x[nonmembers], y[nonmembers]], delimiter=",")
    from fedaudit.data import write_privacy_meter_txt

    write_privacy_meter_txt(folder / "population.txt", x[population], y[population])
    return folder, model, x, y, members, nonmembers


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """The command as a user runs it: in a fresh process, with the user's environment (the test session's
    TF_CPP_MIN_LOG_LEVEL is not the user's, so it is left out; fedaudit chooses its own when it is unset)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "fedaudit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)


def test_audit_model_writes_a_run_directory_and_a_report(saved, tmp_path):
    folder, model, x, y, members, nonmembers = saved
    out = tmp_path / "audit"
    done = cli("audit-model", folder / "model.keras", "--members", folder / "members.npz",
               "--nonmembers", folder / "nonmembers.csv", "--population", folder / "population.txt",
               "--attacks", "whitebox,blackbox,loss,population", "--attacks", "rmia-offline",
               "--reference-models", "2", "--epochs", "5", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(out)          # the last line of stdout: the run directory
    err = done.stderr.strip().splitlines()
    assert err and all(line.startswith("fedaudit: ") for line in err), err   # no TensorFlow start-up lines
    assert err[-1] == f"fedaudit: report: {out / 'report.html'}"
    assert any("attack loss: AUC" in line for line in err)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "model-audit" and summary["headline"] == "whitebox"
    assert set(summary["attacks"]) == {"whitebox", "blackbox", "loss", "population", "rmia-offline"}
    assert summary["model"]["ends_in_softmax"] is True
    assert summary["data"]["n_members"] == 200 and summary["data"]["n_nonmembers"] == 300
    assert summary["data"]["n_population"] == 600
    # an overfit model: members are recognisable by their loss
    assert summary["attacks"]["loss"]["auc"] > 0.55
    # the loss attack's metrics are those of the target's own losses, computed here independently
    from fedaudit.metrics import auc

    p = np.clip(model.predict(x, verbose=0), 1e-30, 1)
    own_loss = -np.log(p[np.arange(len(y)), y])
    assert summary["attacks"]["loss"]["auc"] == pytest.approx(auc(-own_loss[members], -own_loss[nonmembers]),
                                                              abs=2e-3)
    records = np.genfromtxt(out / "records.csv", delimiter=",", names=True, dtype=None, encoding="utf-8",
                            deletechars="")
    assert len(records) == 500 and records["member"].sum() == 200
    np.testing.assert_allclose(records["loss"], own_loss[np.r_[members, nonmembers]], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(records["score_loss"], -records["loss"], rtol=1e-4)
    assert {"score_whitebox", "score_rmia-offline"} <= set(records.dtype.names)
    mp, nmp = np.load(out / "member_probs.npy"), np.load(out / "nonmember_probs.npy")
    assert mp.shape == (200,) and nmp.shape == (300,) and ((mp >= 0) & (mp <= 1)).all()
    np.testing.assert_allclose(mp, records["risk"][records["member"] == 1], rtol=1e-4)
    for name in ("roc.png", "roc_log.png", "histogram.png"):
        assert (out / "plots" / name).stat().st_size > 1000, name
    html = (out / "report.html").read_text()
    assert 'id="headline"' in html and "rmia-offline" in html and "Summary for the DPIA" in html
    assert "http://" not in html and "https://" not in html
    # `fedaudit report` rebuilds the single-model report from the files alone
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()


@pytest.mark.parametrize("extra, words", [
    (["--attacks", "lira-online"], "--reference-models"),
    (["--attacks", "nope"], "unknown attack 'nope'"),
    (["--folds", "1"], "--folds"),
])
def test_bad_options_are_one_line(saved, tmp_path, capsys, extra, words):
    folder = saved[0]
    out = tmp_path / "audit"
    code = main(["audit-model", str(folder / "model.keras"), "--members", str(folder / "members.npz"),
                 "--nonmembers", str(folder / "nonmembers.csv"), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not out.exists()


def test_bad_files_are_one_line(saved, tmp_path, capsys):
    folder = saved[0]
    wide = tmp_path / "wide.npz"
    np.savez(wide, x=np.zeros((20, 65), np.float32), y=np.zeros(20, int))
    cases = [
        ([tmp_path / "missing.keras", folder / "members.npz", folder / "nonmembers.csv"], "no such file"),
        ([folder / "members.npz", folder / "members.npz", folder / "nonmembers.csv"], "not a .keras file"),
        ([folder / "model.keras", tmp_path / "members.parquet", folder / "nonmembers.csv"], "unknown file type"),
        ([folder / "model.keras", wide, wide], "65"),        # records do not fit the model's input
    ]
    for (model, members, nonmembers), words in cases:
        out = tmp_path / "audit"
        code = main(["audit-model", str(model), "--members", str(members), "--nonmembers", str(nonmembers),
                     "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], err
        assert not out.exists()


def test_the_cli_and_the_library_run_one_audit_with_one_set_of_default_attacks(saved, tmp_path):
    """``fedaudit audit-model``, :func:`fedaudit.model_audit.audit` and :func:`fedaudit.attacks.audit_model` (its
    keyword form), each with its defaults: the same attacks, the same scores, the same membership probabilities."""
    from fedaudit.attacks import audit_model
    from fedaudit.model_audit import DEFAULT_ATTACKS, ModelAuditSettings, audit

    folder, model, x, y, members, nonmembers = saved
    out = tmp_path / "audit"
    assert main(["audit-model", str(folder / "model.keras"), "--members", str(folder / "members.npz"),
                 "--nonmembers", str(folder / "nonmembers.csv"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["attacks"]) == list(DEFAULT_ATTACKS) == ModelAuditSettings().attacks

    result = audit(model, (x[members], y[members]), (x[nonmembers], y[nonmembers]))
    assert list(result.attacks) == list(DEFAULT_ATTACKS) and result.headline == summary["headline"]
    np.testing.assert_allclose(result.member_probs, np.load(out / "member_probs.npy"), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.nonmember_probs, np.load(out / "nonmember_probs.npy"), rtol=1e-5, atol=1e-7)
    for name, s in result.attacks.items():
        assert s.auc == pytest.approx(summary["attacks"][name]["auc"], abs=1e-9), name

    # the keyword form: the model ends in a softmax, so its outputs are probabilities
    results = audit_model(model, x[members], y[members], x[nonmembers], y[nonmembers], from_probabilities=True)
    assert list(results) == list(DEFAULT_ATTACKS)
    for name, s in results.items():
        assert s.auc == pytest.approx(result.attacks[name].auc, abs=1e-4), name
