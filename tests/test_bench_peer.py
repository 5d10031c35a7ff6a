"""`fedaudit bench attacks --peer art`: ART's black-box attack beside fedaudit's on the same records (small workload)."""

import json
import sys

import numpy as np
import pytest

from fedaudit.errors import ConfigError


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    from fedaudit.bench import peer_art

    monkeypatch.setitem(sys.modules, "art", None)      # import art fails as when it is not installed
    with pytest.raises(ConfigError) as info:
        peer_art.run(quick=True)
    assert 'pip install "fedaudit[bench]"' in str(info.value) and "\n" not in str(info.value)


def test_peer_only_for_the_attacks_bench(capsys):
    from fedaudit.cli import main

    assert main(["bench", "signals", "--peer", "art", "--quick"]) == 2
    assert "--peer" in capsys.readouterr().err


def test_art_on_a_model_that_learned_nothing_is_chance():
    """ART fed predictions that carry no membership: its scores are out of sample, so AUC ~ 0.5."""
    pytest.importorskip("art")
    from fedaudit.bench.peer_art import art_scores, softmax
    from fedaudit.metrics import auc

    rng = np.random.default_rng(0)
    n, c = 400, 5
    probs = softmax(rng.normal(size=(2 * n, c)))
    y = rng.integers(0, c, 2 * n)
    member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    known = rng.permutation(2 * n)[:n]
    held = np.setdiff1d(np.arange(2 * n), known)
    s = art_scores("rf", c, (3,), probs[known], y[known], member[known], probs[held], y[held])
    assert abs(auc(s[member[held]], s[~member[held]]) - 0.5) < 0.08


def test_quick_peer_bench_side_by_side(tmp_path, capsys):
    pytest.importorskip("art")
    pytest.importorskip("keras")
    from fedaudit.cli import main

    out = tmp_path / "peer.json"
    assert main(["bench", "attacks", "--peer", "art", "--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    names = set(figures["attacks"])
    assert {"ART rf", "ART gb", "meminf whitebox (network + forest)", "meminf whitebox (network only)",
            "loss threshold"} <= names
    for name, a in figures["attacks"].items():
        assert a["n_members"] == 100 and a["n_nonmembers"] == 100, name     # the held-out records, the same for all
        assert 0 <= a["auc_ci"][0] <= a["auc"] <= a["auc_ci"][1] <= 1, name
        assert name in printed
    # the overfit quick target leaks: every attack that reads it does better than chance
    assert figures["attacks"]["ART rf"]["auc"] > 0.6
    assert figures["attacks"]["meminf whitebox (network + forest)"]["auc"] > 0.6
    assert "not measurable" in printed           # 100 non-members cannot measure 1% FPR


def test_target_draws_are_seeded_varied_and_checked():
    from fedaudit.bench.peer_art import draw_targets

    a, b = draw_targets(8, 2027, "mixed"), draw_targets(8, 2027, "mixed")
    assert a == b and a != draw_targets(8, 2028, "mixed")
    assert len({t["seed"] for t in a}) == 8 and {t["kind"] for t in a} == {"purchase", "longtail"}
    assert all(t["reference_models"] == 4 and t["options"]["subgroups"] > 1 for t in a if t["kind"] == "longtail")
    tutorial = draw_targets(4, 1, "tutorial")
    assert all((t["features"], t["classes"], t["members"], t["epochs"], t["widths"]) == (600, 20, 600, 40, None)
               for t in tutorial)
    with pytest.raises(ConfigError, match="--family"):
        draw_targets(2, 0, "cifar")
    with pytest.raises(ConfigError, match="--targets"):
        draw_targets(0, 0, "mixed")


def test_targets_without_peer_is_one_line_error(capsys):
    from fedaudit.cli import main

    assert main(["bench", "attacks", "--targets", "2"]) == 2
    assert "--targets" in capsys.readouterr().err


def test_long_tail_draws_deal_every_class_count_and_wins_count_auc():
    from fedaudit.bench.peer_art import LONGTAIL_CLASSES, _wins, draw_targets

    for seed in (0, 2027):
        tails = draw_targets(len(LONGTAIL_CLASSES), seed, "longtail")
        assert sorted(t["classes"] for t in tails) == sorted(LONGTAIL_CLASSES)
    per_target = [{"tpr_at_1pct": {"loss threshold": 0.05, "ART rf": 0.04, "rmia": 0.06},
                   "auc": {"loss threshold": 0.80, "ART rf": 0.70, "rmia": 0.79}},
                  {"tpr_at_1pct": {"loss threshold": 0.05, "ART rf": 0.08, "rmia": 0.04},
                   "auc": {"loss threshold": 0.80, "ART rf": 0.70, "rmia": 0.82}}]
    w = _wins(per_target)["rmia"]
    assert (w["targets"], w["ge_loss"], w["ge_art"], w["auc_ge_loss"]) == (2, 1, 1, 1)
    assert w["mean_tpr"] == pytest.approx(0.05) and _wins(per_target)["ART rf"]["mean_tpr"] == pytest.approx(0.06)
