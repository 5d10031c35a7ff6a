"""The attack reported at 1% FPR: chosen per fold on the other folds' known records, never on the scored ones."""

import numpy as np

from fedaudit.auditor.results import MIN_KNOWN_NONMEMBERS, light_metrics, low_fpr_choice
from fedaudit.schema import ViewResult, ViewSummary


def _records(seed, n=2000, folds=5, known_fraction=0.5):
    rng = np.random.default_rng(seed)
    member = np.arange(n) < n // 2
    fold = rng.permutation(np.arange(n) % folds)
    known = rng.random(n) < known_fraction
    return rng, member, fold, known


def _tpr(score, member):
    return light_metrics(score[member], score[~member])["tpr_at_1pct"]


def test_attack_planted_strong_at_low_fpr_is_chosen_over_the_first_ranked():
    rng, member, fold, known = _records(0)
    # "ranked": the better AUC, no tail; "tail": weaker AUC, but 20% of the members far above every non-member
    ranked = rng.normal(size=member.size) + 0.7 * member
    tail = rng.normal(size=member.size) + np.where(member & (rng.random(member.size) < 0.2), 8.0, 0.0)
    assert light_metrics(ranked[member], ranked[~member])["auc"] > light_metrics(tail[member], tail[~member])["auc"]
    name, per_fold, score = low_fpr_choice({"ranked": ranked, "tail": tail}, member, known, fold)
    assert name == "tail" and set(per_fold.values()) == {"tail"}
    np.testing.assert_array_equal(score, tail)
    assert _tpr(score, member) >= max(_tpr(ranked, member), _tpr(tail, member))


def test_no_signal_stays_at_chance_where_an_in_sample_choice_does_not():
    honest, in_sample = [], []
    for seed in range(4):
        rng, member, fold, known = _records(seed, n=2000, known_fraction=1.0)
        scores = {f"a{i}": rng.normal(size=member.size) for i in range(20)}
        _, _, score = low_fpr_choice(scores, member, known, fold)
        honest.append(_tpr(score, member))
        # the same choice made on the scored records' own labels: the best of 20 coins looks like a leak
        in_sample.append(max(_tpr(s, member) for s in scores.values()))
    assert np.mean(honest) < 0.016
    assert np.mean(in_sample) > np.mean(honest) + 0.004


def test_folds_that_disagree_get_their_quantiles_and_both_names():
    rng, member, fold, known = _records(1)
    a = rng.normal(size=member.size) + 0.5 * member
    b = 100.0 + 10.0 * rng.normal(size=member.size)          # another scale, no signal...
    b[fold == 0] += 80.0 * (member[fold == 0] & (rng.random(int(np.sum(fold == 0))) < 0.3))
    # ...but a planted tail outside fold 1 only: every fold whose outside holds fold 0 may choose b
    name, per_fold, score = low_fpr_choice({"a": a, "b": b}, member, known, fold)
    assert per_fold[0] == "a"                   # fold 0's own leak is invisible to its choice
    assert "b" in per_fold.values() and name == "a / b (chosen per fold)"
    for f in per_fold:                          # one scale across folds: each fold's quantiles
        here = np.sort(score[fold == f])
        np.testing.assert_allclose(here, np.arange(1, here.size + 1) / here.size)


def test_a_challenger_within_noise_of_the_first_attack_does_not_replace_it():
    rng, member, fold, known = _records(3)
    first = rng.normal(size=member.size) + 0.7 * member
    twin = rng.normal(size=member.size) + 0.75 * member          # as strong, up to noise
    name, per_fold, score = low_fpr_choice({"first": first, "twin": twin}, member, known, fold)
    assert name == "first" and set(per_fold.values()) == {"first"}


def test_too_few_known_nonmembers_keep_the_first_attack():
    rng, member, fold, known = _records(2, n=2 * MIN_KNOWN_NONMEMBERS)
    tail = rng.normal(size=member.size) + 10.0 * member
    name, per_fold, _ = low_fpr_choice({"first": rng.normal(size=member.size), "tail": tail}, member, known, fold)
    assert name == "first" and set(per_fold.values()) == {"first"}


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
