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


# ---- a quiet command line, as a user sees it: a fresh process with the user's environment ------------------------

def fresh_cli(*args, cwd=None, timeout=600):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}   # the test session's, not the user's
    return subprocess.run([sys.executable, "-m", "fedaudit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def test_bad_dataset_prints_exactly_one_line_before_tensorflow(tmp_path):
    path = write_scenario(tmp_path, "[data]\ndataset = 'no-such-data'")
    done = fresh_cli("run", path, "--out", tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "fedaudit: error: unknown dataset 'no-such-data'; known datasets: cifar10, cifar100, csv, digits, npz, "
        "privacy-meter, synthetic-purchase"]
    assert done.stdout == "" and not (tmp_path / "run").exists()


def test_quiet_filter_drops_only_the_probe_lines(tmp_path):
    """The import hook keeps every line that is not one of TensorFlow's start-up probe lines (on a stand-in)."""
    import subprocess
    import sys

    package = tmp_path / "standin"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1796161607.423934    6120 cudart_stub.cc:31] Could not find cuda drivers on "
        "your machine, GPU will not be used.\\n')\n"
        "os.write(2, b'a line that matters\\n')\n")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from fedaudit import quiet; "
            "quiet._FINDER.name = 'standin'; quiet.install(); import standin; print(standin.__spec__.loader)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "a line that matters\n"
    assert "QuietLoader" not in done.stdout          # the module keeps its own loader


def test_gpu_machines_are_left_alone(tmp_path):
    from fedaudit.quiet import gpu_driver_present, is_noise

    assert not gpu_driver_present([tmp_path / "nvidia-version"])
    (tmp_path / "nvidia-version").write_text("NVRM version: 550")
    assert gpu_driver_present([tmp_path / "nvidia-version"])
    assert is_noise("I0000 00:00:1796161610.369344    6120 cudart_stub.cc:31] Could not find cuda drivers on your "
                    "machine, GPU will not be used.")
    assert not is_noise("I0000 00:00:1796161610.369344    6120 gpu_device.cc:2019] Created device /GPU:0")


@pytest.mark.ray
def test_a_run_ends_with_its_headline_on_stderr_and_its_directory_on_stdout(tmp_path):
    out = tmp_path / "run"
    done = fresh_cli("run", SCENARIOS / "quickstart.toml", "--clients", "2", "--rounds", "2",
                     "--set", "federation.local_epochs=1", "--set", "audit.inferences=[]", "--out", out, "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(out)
    err = done.stderr.strip().splitlines()
    assert all(line.startswith("fedaudit: ") for line in err), err      # no CUDA probe lines, no Ray chatter
    assert err[0].startswith("fedaudit: honest-but-curious server: AUC ")
    assert err[1].startswith("fedaudit: participant (another client): AUC ")
    assert err[2].startswith("fedaudit: test accuracy ") and err[2].endswith("after 2 rounds")
    assert err[3] == f"fedaudit: report: {out / 'report.html'}" and (out / "report.html").is_file()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "2 configured, 2 recorded</td>" in html and "did not finish" not in html    # built after the final status


def test_checks_that_need_no_tensorflow_run_before_it(tmp_path):
    import subprocess
    import sys

    scenarios = []
    for folder, body in (("a", "[data]\ndataset = 'no-such-data'"), ("b", "[model]\nname = 'resnet'"),
                         ("c", "[model]\nname = 'cnn'")):     # digits are flat: the cnn refuses before Keras loads
        (tmp_path / folder).mkdir()
        scenarios.append(write_scenario(tmp_path / folder, body))
    code = ("import sys; from fedaudit.cli import main; "
            f"codes = [main(['run', p, '-q']) for p in {[str(p) for p in scenarios]!r}]; "
            "codes.append(main(['audit-model', 'm.keras', '--members', 'x.npz', '--nonmembers', 'y.npz'])); "
            "print(codes, sorted(m for m in ('tensorflow', 'keras', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.stdout.strip() == "[2, 2, 2, 2] []", done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 4
