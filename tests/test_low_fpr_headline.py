"""The attack reported at 1% FPR: chosen on the adversary's known records, measured on the others."""

import numpy as np

from fedaudit.auditor.results import MIN_KNOWN_NONMEMBERS, harrell_davis_quantile, light_metrics, low_fpr_choice
from fedaudit.schema import ViewResult, ViewSummary


def _records(seed, n=2000, known_fraction=0.5):
    rng = np.random.default_rng(seed)
    member = np.arange(n) < n // 2
    known = rng.random(n) < known_fraction
    return rng, member, known


def _tpr(score, member, on):
    return light_metrics(score[member & on], score[~member & on])["tpr_at_1pct"]


def test_attack_planted_strong_at_low_fpr_is_chosen_over_the_first_ranked():
    rng, member, known = _records(0)
    # "ranked": the better AUC, no tail; "tail": weaker AUC, but 20% of the members far above every non-member
    ranked = rng.normal(size=member.size) + 0.7 * member
    tail = rng.normal(size=member.size) + np.where(member & (rng.random(member.size) < 0.2), 8.0, 0.0)
    assert light_metrics(ranked[member], ranked[~member])["auc"] > light_metrics(tail[member], tail[~member])["auc"]
    name, unknown = low_fpr_choice({"ranked": ranked, "tail": tail}, member, known)
    assert name == "tail"
    np.testing.assert_array_equal(unknown, ~known)
    assert _tpr(tail, member, unknown) >= _tpr(ranked, member, unknown)


def test_no_signal_stays_at_chance_where_a_choice_on_the_scored_records_does_not():
    honest, in_sample = [], []
    for seed in range(4):
        rng, member, known = _records(seed, n=4000)
        scores = {f"a{i}": rng.normal(size=member.size) for i in range(20)}
        name, unknown = low_fpr_choice(scores, member, known)
        honest.append(_tpr(scores[name], member, unknown))
        # the best of 20 coins on the records it is measured on looks like a leak
        in_sample.append(max(_tpr(s, member, unknown) for s in scores.values()))
    assert np.mean(honest) < 0.016
    assert np.mean(in_sample) > np.mean(honest) + 0.004


def test_the_smoothed_tail_quantile_is_nearer_the_true_one_than_the_order_statistic():
    rng = np.random.default_rng(3)
    samples = rng.normal(size=(300, 150))          # 150 known non-members, the 98% quantile is 2.054
    smooth = np.array([harrell_davis_quantile(x, 0.98) for x in samples])
    plain = np.sort(samples, axis=1)[:, 146]        # the order statistic at 98%
    assert abs(smooth.mean() - 2.054) < 0.05
    assert np.sqrt(np.mean((smooth - 2.054) ** 2)) < 0.95 * np.sqrt(np.mean((plain - 2.054) ** 2))


def test_with_a_hundred_known_nonmembers_the_attack_with_the_member_tail_is_chosen_most_times():
    picks = 0
    for seed in range(40):
        rng, member, known = _records(seed, n=400)     # about 100 known non-members
        # "shift": the better AUC; "tail": members' scores spread wider, over twice the TPR at 1% FPR
        scores = {"shift": rng.normal(size=member.size) + 0.8 * member,
                  "tail": rng.normal(size=member.size) * np.where(member, 1.5, 1.0) + 0.8 * member}
        name, _ = low_fpr_choice(scores, member, known)
        picks += name == "tail"
    assert picks >= 30


def test_only_scored_known_records_choose_and_only_scored_unknown_ones_are_measured():
    rng, member, known = _records(1)
    scored = rng.random(member.size) < 0.8
    leak = rng.normal(size=member.size) + np.where(member & ~scored, 8.0, 0.0)   # a "leak" on unscored records only
    name, unknown = low_fpr_choice({"first": rng.normal(size=member.size) + 0.5 * member, "leak": leak},
                                   member, known, scored)
    assert name == "first"
    np.testing.assert_array_equal(unknown, scored & ~known)


def test_too_few_known_nonmembers_keep_the_first_attack():
    rng, member, known = _records(2, n=2 * MIN_KNOWN_NONMEMBERS)
    tail = rng.normal(size=member.size) + 10.0 * member
    name, _ = low_fpr_choice({"first": rng.normal(size=member.size), "tail": tail}, member, known)
    assert name == "first"


def test_old_run_directories_read_without_the_low_fpr_fields():
    old = {"auc": 0.7, "tpr_at_1pct": 0.05, "attack": "stacked-whitebox", "headline": "whitebox", "rounds": [1],
           "aggregations": {}, "attacks_across_rounds": {}, "stacked_rounds": [1]}
    s = ViewSummary.from_dict(old)
    assert s.low_fpr is None and s.low_fpr_attack is None
    assert "low_fpr" not in s.to_dict() and "low_fpr_attack" not in s.to_dict()
    new = ViewSummary.from_dict({**old, "low_fpr_attack": "loss", "low_fpr": {"tpr_at_1pct": 0.09}}).to_dict()
    assert new["low_fpr_attack"] == "loss" and new["low_fpr"]["tpr_at_1pct"] == 0.09
    assert "low_fpr" not in ViewResult.from_dict({"attack": "loss", "auc": 0.6}).to_dict()
    line = ViewResult.from_dict({"attack": "loss", "low_fpr_attack": "blackbox", "low_fpr": {"auc": 0.6}})
    assert line.low_fpr_attack == "blackbox" and line.to_dict()["low_fpr"] == {"auc": 0.6}


def test_the_report_sentence_takes_the_rate_from_the_chosen_attack_and_names_it():
    from fedaudit.report.narrative import _tm_sentence

    headline = {"auc": 0.8, "tpr_at_1pct": 0.02, "n_nonmembers": 400}
    text = _tm_sentence("server", headline, True, low=({"tpr_at_1pct": 0.15}, "loss"))
    assert "15.0%" in text and "loss" in text and "2.0%" not in text
    assert "2.0%" in _tm_sentence("server", headline, True)          # older runs: the headline's


def test_the_rate_at_0_1pct_says_whose_it_is_where_1pct_names_another_attack():
    from types import SimpleNamespace

    from fedaudit.report.narrative import _tm_sentence
    from fedaudit.report.run_report import _headline_note

    headline = {"auc": 0.8, "tpr_at_1pct": 0.02, "tpr_at_0_1pct": 0.004, "n_nonmembers": 4000}
    chosen = _tm_sentence("server", headline, True, low=({"tpr_at_1pct": 0.15}, "loss"))
    assert "the headline attack, on every audited record, identifies 0.40%" in chosen
    assert "it still identifies 0.40%" in _tm_sentence("server", headline, True)
    run = lambda low: SimpleNamespace(low_fpr=lambda tm: low)           # noqa: E731
    assert "by the headline attack" in _headline_note(run(({"tpr_at_1pct": 0.15}, "loss")), "server", headline)
    assert _headline_note(run((None, None)), "server", headline) == ""
    assert _headline_note(run(({"tpr_at_1pct": 0.15}, "loss")), "server", {"tpr_at_0_1pct": None}) == ""


def test_the_console_line_states_the_rate_the_report_states():
    from fedaudit.report.console import _risk_line

    head = {"auc": 0.64, "tpr_at_1pct": 0.016, "n_members": 500, "n_nonmembers": 500}
    line = _risk_line("server", head, "stacked-whitebox", ({"tpr_at_1pct": 0.038}, "loss"))
    assert "AUC 0.644" not in line and "AUC 0.640" in line and "(stacked-whitebox)" in line
    assert "TPR 3.8% at 1% FPR (loss, on the records it did not know)" in line and "1.6%" not in line
    assert "TPR 1.6% at 1% FPR" in _risk_line("server", head, "stacked-whitebox")


def test_the_risk_level_reads_the_larger_rate_at_1pct_of_the_two_attacks():
    from fedaudit.report.console import _risk_line
    from fedaudit.risk import risk_level

    head = {"auc": 0.56, "tpr_at_1pct": 0.012, "tpr_at_1pct_ci": [0.004, 0.03]}
    assert risk_level(head) == "low"
    assert risk_level(head, {"tpr_at_1pct": 0.12, "tpr_at_1pct_ci": [0.08, 0.16]}) == "high"
    assert risk_level(head, {"tpr_at_1pct": 0.04}) == "moderate"
    assert risk_level(head, {"tpr_at_1pct": 0.0}) == "low"                       # a lower rate never lowers it
    assert risk_level({"auc": 0.5, "tpr_at_1pct": 0.01}, {"tpr_at_1pct": 0.02, "tpr_at_1pct_ci": [0.012, 0.03]}) == "low"
    assert risk_level({"auc": 0.5, "tpr_at_1pct": 0.01}) == "negligible"
    line = _risk_line("server", head, "stacked-whitebox", ({"tpr_at_1pct": 0.12}, "whitebox"))
    assert line.endswith("TPR 12.0% at 1% FPR (whitebox, on the records it did not know); risk: high")


def test_the_frontier_and_the_comparison_read_the_rate_the_report_states(tmp_path):
    import json

    from fedaudit.frontier import run_figures
    from fedaudit.report.compare import _low
    from fedaudit.report.rundata import load_run

    from test_report import write_fake_run

    run_dir = write_fake_run(tmp_path / "run")
    summary = json.loads((run_dir / "summary.json").read_text())
    server = summary["threat_models"]["server"]
    server["low_fpr_attack"] = "loss"
    server["low_fpr"] = {"auc": 0.7, "tpr_at_1pct": 0.234, "tpr_at_1pct_ci": [0.2, 0.27], "n_members": 300,
                         "n_nonmembers": 300}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    fig = run_figures(run_dir)["threat_models"]["server"]
    assert fig["tpr_at_1pct"] == 0.234 and fig["intervals"]["tpr_at_1pct"] == [0.2, 0.27]
    assert fig["tpr_at_1pct_attack"] == "loss"
    assert fig["auc"] == server["auc"]                                   # the other figures stay the headline's
    assert _low(load_run(run_dir), "server")["tpr_at_1pct"] == 0.234
