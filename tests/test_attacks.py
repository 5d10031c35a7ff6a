"""Score attacks on synthetic logits with a planted signal (the right answer is known), the reference-model
design and cache, and one small audit of a real model (the only test here that starts Ray)."""

import json

import numpy as np
import pytest

from fedaudit.attacks import ALIASES, SCORE_ATTACKS, AttackInputs, run_score_attack
from fedaudit.attacks.reference_models import (
    cache_key, prepare_reference_logits, reference_design, train_reference_models,
)
from fedaudit.attacks.rmia import rmia_scores, tune_offline_a, tune_rmia
from fedaudit.attacks.scores import logit_confidence, loss, true_class_prob
from fedaudit.errors import AttackError, ConfigError
from fedaudit.metrics import auc

C = 5


def logits_for(phi, labels):
    """Logits whose true-class logit-scaled confidence is exactly phi (other classes at 0)."""
    phi = np.asarray(phi, float)
    z = np.zeros(phi.shape + (C,))
    idx = np.broadcast_to(labels[:, None], z.shape[:-1] + (1,))
    np.put_along_axis(z, idx, (phi + np.log(C - 1))[..., None], axis=-1)
    return z


def planted(seed=0, n=1200, R=8, m=600, shift=2.5, spread=3.0, class_offsets=None, shift_sign=None):
    """Record i has difficulty d_i; a model that trained on it adds ``shift`` (times shift_sign_i) to phi."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    zl = rng.integers(0, C, m)
    d = rng.normal(0, spread, n)
    dz = rng.normal(0, spread, m)
    if class_offsets is not None:
        d = d + np.asarray(class_offsets)[labels]
        dz = dz + np.asarray(class_offsets)[zl]
    sign = np.ones(n) if shift_sign is None else shift_sign(rng, n)
    member = rng.random(n) < 0.5
    in_mask = rng.random((R, n)).argsort(axis=0) < R // 2
    target = d + shift * sign * member + rng.normal(0, 1, n)
    ref_online = d + shift * sign * in_mask + rng.normal(0, 1, (R, n))
    ref_offline = d + rng.normal(0, 1, (R, n))
    pop_in = rng.random((R, m)) < 0.5
    zt = dz + rng.normal(0, 1, m)
    zref = dz + shift * pop_in + rng.normal(0, 1, (R, m))
    common = dict(target_logits=logits_for(target, labels), labels=labels,
                  population_logits=logits_for(zt, zl), population_labels=zl,
                  reference_population_logits=logits_for(zref, zl), reference_population_in=pop_in)
    online = AttackInputs(**common, reference_logits=logits_for(ref_online, labels), reference_in=in_mask)
    offline = AttackInputs(**common, reference_logits=logits_for(ref_offline, labels))
    return online, offline, member


def attack_auc(name, inputs, member, **options):
    s = run_score_attack(name, inputs, **options)
    assert s.shape == member.shape and np.isfinite(s).all()
    return auc(s[member], s[~member])


ALL = ["loss", "confidence", "entropy", "modified-entropy", "population", "reference", "lira-offline", "lira-online",
       "rmia-offline", "rmia-online"]


def test_registry_names_aliases_and_errors():
    assert set(ALL) <= set(SCORE_ATTACKS)
    assert ALIASES["lira"] == "lira-offline" and ALIASES["rmia"] == "rmia-offline"
    online, offline, _ = planted(n=50, m=40)
    with pytest.raises(AttackError, match="allowed: .*lira-online"):
        run_score_attack("lira-onlin", online)
    with pytest.raises(AttackError, match="unknown option 'sigma'.*fixed_variance"):
        run_score_attack("lira-offline", offline, sigma=1)
    with pytest.raises(AttackError, match="lira-online.*trained on the audited records.*reference_in"):
        run_score_attack("lira-online", offline)
    plain = AttackInputs(offline.target_logits, offline.labels)
    with pytest.raises(AttackError, match="population"):
        run_score_attack("population", plain)
    with pytest.raises(AttackError, match="reference"):
        run_score_attack("rmia-offline", plain)
    with pytest.raises(AttackError, match="reference_logits: expected shape"):
        AttackInputs(offline.target_logits, offline.labels, reference_logits=np.zeros((2, 3, C)))
    with pytest.raises(AttackError, match="labels"):
        AttackInputs(offline.target_logits, offline.labels + C)
    with pytest.raises(AttackError, match="reference_in"):
        AttackInputs(offline.target_logits, offline.labels, reference_logits=offline.reference_logits,
                     reference_in=np.zeros((1, 2), bool))


def test_statistics_are_stable_at_extreme_logits():
    z = np.array([[1000.0, -1000.0, 0.0], [0.0, 0.0, 0.0], [-50.0, 50.0, 0.0]])
    y = np.array([0, 1, 0])
    phi = logit_confidence(z, y)
    assert np.isfinite(phi).all() and phi[0] > 900 and phi[2] < -90
    assert phi[1] == pytest.approx(np.log(1 / 3 / (2 / 3)))
    assert np.isfinite(loss(z, y)).all() and loss(z, y)[2] == pytest.approx(100.0)
    assert true_class_prob(z, y)[1] == pytest.approx(1 / 3)
    # (R, n, C) works the same per model
    assert logit_confidence(np.stack([z, z]), y).shape == (2, 3)


@pytest.mark.parametrize("name", ALL)
def test_every_attack_finds_the_planted_members_with_the_right_sign(name):
    online, offline, member = planted(seed=1)
    inputs = online if name.endswith("online") else offline
    a = attack_auc(name, inputs, member)
    assert a > 0.6, f"{name}: AUC {a:.3f} on a planted signal"


def test_per_record_calibration_beats_the_global_loss_threshold():
    # records differ a lot in difficulty: reference models calibrate it away, a global threshold cannot
    online, offline, member = planted(seed=2, spread=4.0)
    base = attack_auc("loss", offline, member)
    for name in ("reference", "lira-offline", "rmia-offline"):
        assert attack_auc(name, offline, member) > base + 0.1, name
    for name in ("lira-online", "rmia-online"):
        assert attack_auc(name, online, member) > base + 0.1, name


def test_population_attack_calibrates_per_class():
    offsets = [-6.0, -3.0, 0.0, 3.0, 6.0]
    _, offline, member = planted(seed=3, spread=0.5, class_offsets=offsets)
    per_class = attack_auc("population", offline, member)
    assert per_class > attack_auc("loss", offline, member) + 0.1
    # one global threshold ranks exactly like the loss
    s_global = run_score_attack("population", offline, per_class=False)
    s_loss = run_score_attack("loss", offline)
    assert np.array_equal(np.argsort(s_global, kind="stable"), np.argsort(s_loss, kind="stable"))
    assert attack_auc("population", offline, member, method="empirical") > 0.6


def test_online_beats_offline_when_membership_moves_records_either_way():
    # half the records gain confidence when trained on, half lose it: a one-sided offline test sees half
    flip = lambda rng, n: np.where(rng.random(n) < 0.5, 1.0, -1.0)  # noqa: E731
    online, offline, member = planted(seed=4, shift=3.0, shift_sign=flip)
    assert attack_auc("lira-online", online, member) > attack_auc("lira-offline", offline, member) + 0.1
    # and with per-record variances too
    assert attack_auc("lira-online", online, member, fixed_variance=False) > 0.75


def test_rmia_counts_pairwise_likelihood_ratios_and_breaks_ties_by_the_ratio():
    rng = np.random.default_rng(5)
    R, n, m = 4, 60, 40
    px, pz = rng.uniform(0.05, 1, n), rng.uniform(0.05, 1, m)
    pxr, pzr = rng.uniform(0.05, 1, (R, n)), rng.uniform(0.05, 1, (R, m))
    xin, zin = rng.random((R, n)).argsort(axis=0) < R // 2, np.zeros((R, m), bool)
    for offline, a, gamma in ((False, 0.0, 1.0), (True, 0.3, 1.0), (True, 0.7, 2.0)):
        bare = rmia_scores(px, pxr, xin, pz, pzr, zin, offline=offline, a=a, gamma=gamma, tie_break=False)
        if offline:
            p_x = ((1 + a) * np.array([pxr[~xin[:, i], i].mean() for i in range(n)]) + 1 - a) / 2
            p_z = ((1 + a) * pzr.mean(axis=0) + 1 - a) / 2
        else:
            p_x, p_z = pxr.mean(axis=0), pzr.mean(axis=0)
        lr = (px / p_x)[:, None] / (pz / p_z)[None, :]
        assert np.allclose(bare, (lr >= gamma).mean(axis=1))
        broken = rmia_scores(px, pxr, xin, pz, pzr, zin, offline=offline, a=a, gamma=gamma)
        assert np.allclose(np.floor(broken * m + 1e-9) / m, bare)
        ratio = px / p_x
        assert np.array_equal(np.argsort(broken), np.argsort(ratio))


def test_rmia_online_game_is_not_fooled_by_the_other_models_in_out_counts():
    """Every audited record is IN for half the reference models, so among the others a member of model j has one
    IN model fewer: a plain mean over them marks j's members by itself. The game's AUC must be what a marginal
    from models independent of j's membership gives (what the target's attack has), not above it."""
    from fedaudit.attacks.rmia import _game_auc

    rng = np.random.default_rng(0)
    n, R = 4000, 4
    difficulty = rng.normal(0, 1.5, n)

    def probs(in_mask):      # true-class probabilities of models that memorise their members a little
        return 1.0 / (1.0 + np.exp(-(difficulty + 0.7 * in_mask + rng.normal(0, 0.5, in_mask.shape))))

    in_mask = rng.random((R, n)).argsort(axis=0) < R // 2
    p = probs(in_mask)
    independent = probs(rng.random((R, n)).argsort(axis=0) < R // 2).mean(axis=0)
    oracle = np.mean([auc((p[j] / independent)[in_mask[j]], (p[j] / independent)[~in_mask[j]]) for j in range(R)])
    plain = np.mean([auc(r[in_mask[j]], r[~in_mask[j]]) for j in range(R)
                     for r in [p[j] / np.delete(p, j, axis=0).mean(axis=0)]])
    game = _game_auc(p, in_mask, offline=False, a=0.3)
    assert plain > oracle + 0.04                      # the bias the game must not have
    assert abs(game - oracle) < 0.02, (game, oracle, plain)


def test_rmia_offline_tunes_a_on_reference_models():
    online, offline, member = planted(seed=6)
    p_ref = true_class_prob(offline.reference_population_logits, offline.population_labels)
    a, table = tune_offline_a(p_ref, offline.reference_population_in)
    assert len(table) == 11 and a in table and table[a] == max(table.values())
    assert table[a] > 0.6
    assert tune_offline_a(p_ref, None) == (0.3, {})
    fixed = run_score_attack("rmia-offline", offline, a=a, temperature=1.0)
    tuned = run_score_attack("rmia-offline", offline, temperature=1.0)
    assert np.allclose(fixed, tuned)


def test_reference_design_is_balanced_and_deterministic():
    mask = reference_design(100, 4, include=np.arange(30), train_size=20, seed=3)
    assert mask.shape == (4, 100)
    assert (mask[:, :30].sum(axis=0) == 2).all()
    assert (mask[:, 30:].sum(axis=1) == 20).all()
    assert np.array_equal(mask, reference_design(100, 4, include=np.arange(30), train_size=20, seed=3))
    assert not np.array_equal(mask, reference_design(100, 4, include=np.arange(30), train_size=20, seed=4))
    with pytest.raises(ConfigError, match="at least 2"):
        reference_design(100, 1, include=[0, 1])
    with pytest.raises(ConfigError, match="train_size"):
        reference_design(10, 2, train_size=11)


def test_reference_models_are_cached_and_reused(tmp_path):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(80, 6)).astype(np.float32), rng.integers(0, 3, 80)
    args = ("mlp", {"hidden": [8]}, x, y, 3, 2)
    kw = dict(epochs=2, batch_size=32, seed=0, cache_dir=tmp_path, parallel=False, refit=False)
    first = train_reference_models(*args, **kw)
    assert first.from_cache == [False, False] and len(list(tmp_path.glob("*.npz"))) == 2
    second = train_reference_models(*args, **kw)
    assert second.from_cache == [True, True] and second.keys == first.keys
    for w1, w2 in zip(first.weights, second.weights):
        assert all(np.array_equal(a, b) for a, b in zip(w1, w2))
    weights, in_mask = second
    assert len(weights) == 2 and in_mask.shape == (2, 80)
    # the key changes with anything that changes the weights
    base = ("d" * 64, "mlp", {"hidden": [8]}, (6,), 3, {"epochs": 2}, 0, 0, np.arange(5))
    keys = {cache_key(*base)}
    for i, changed in ((0, "e" * 64), (2, {"hidden": [9]}), (5, {"epochs": 3}), (6, 1), (7, 1), (8, np.arange(6))):
        keys.add(cache_key(*base[:i], changed, *base[i + 1:]))
    assert len(keys) == 7
    assert cache_key(*base, 1) not in keys and cache_key(*base, 0) == cache_key(*base)
    # offline logits for an audit: the population trains the models, the audited records are never IN
    kw.pop("refit")
    refs = prepare_reference_logits("mlp", {"hidden": [8]}, x[:10], y[:10], x[10:], y[10:], 3, 2, **kw)
    assert refs.audit_logits.shape == (2, 10, 3) and refs.audit_in is None
    assert refs.population_logits.shape == (2, 70, 3) and refs.population_in.sum(axis=1).tolist() == [35, 35]
    inputs = refs.inputs(np.zeros((10, 3)), y[:10], np.zeros((70, 3)), y[10:])
    assert run_score_attack("rmia-offline", inputs).shape == (10,)


def test_a_reference_model_that_did_not_fit_its_records_is_trained_again(tmp_path, monkeypatch):
    """One of three reference models comes back untrained (its training stalled): it is trained again with another
    seed and the attempt that fits its records kept; the others, and a set whose models all fit alike, are left."""
    import fedaudit.attacks.reference_models as rm

    rng = np.random.default_rng(3)
    x = rng.normal(size=(240, 6)).astype(np.float32)
    y = np.argmax(x[:, :3], axis=1)
    args = ("mlp", {"hidden": [16]}, x, y, 3, 3)
    kw = dict(epochs=30, batch_size=16, seed=0, cache_dir=tmp_path, parallel=False)
    stalled = rm.model_seed(0, 1)
    train = rm._train_one

    def stall_one(model_name, model_options, x_, y_, num_classes, indices, settings, seed, single_thread=False):
        if seed == stalled:                     # model 1's first attempt: its initial weights
            return train(model_name, model_options, x_, y_, num_classes, indices, dict(settings, epochs=0), seed)
        return train(model_name, model_options, x_, y_, num_classes, indices, settings, seed, single_thread)

    monkeypatch.setattr(rm, "_train_one", stall_one)
    refs = rm.train_reference_models(*args, **kw)
    assert refs.attempts == [0, 1, 0]
    assert min(refs.train_accuracy) > max(refs.train_accuracy) - rm.FIT_GAP
    assert len(list(tmp_path.glob("*.npz"))) == 4                       # both attempts of model 1 are cached
    again = rm.train_reference_models(*args, **kw)
    assert again.from_cache == [True, True, True] and again.keys == refs.keys and again.attempts == [0, 1, 0]
    kept = rm.train_reference_models(*args, **dict(kw, refit=False))
    assert kept.attempts == [0, 0, 0] and kept.train_accuracy[1] < refs.train_accuracy[1] - rm.FIT_GAP
    monkeypatch.setattr(rm, "_train_one", train)
    alike = rm.train_reference_models(*args, **dict(kw, cache_dir=None, seed=5))
    assert alike.attempts == [0, 0, 0]


@pytest.mark.ray
def test_audit_model_on_a_real_target_with_ray(tmp_path):
    from fedaudit.attacks import audit_model
    from fedaudit.data import load_dataset
    from fedaudit.models import build_model, train_model

    d = load_dataset("digits", seed=0)
    idx = np.random.default_rng(0).permutation(len(d))
    mem, non, pop = idx[:300], idx[300:600], idx[600:1000]
    options = {"hidden": [64]}
    model = build_model("mlp", d.input_shape, d.num_classes, seed=1, **options)
    train_model(model, d.x[mem], d.y[mem], epochs=15, seed=1)
    attacks = ["loss", "population", "lira-online", "rmia-online"]   # one set of reference models: one Ray batch
    results = audit_model(model, d.x[mem], d.y[mem], d.x[non], d.y[non], x_population=d.x[pop],
                          y_population=d.y[pop], attacks=attacks, reference_models=2, model_name="mlp",
                          model_options=options, epochs=15, cache_dir=tmp_path, parallel=True, slices=True)
    assert list(results) == attacks
    for name, s in results.items():
        assert s.n_members == 300 and s.n_nonmembers == 300
        assert 0.45 < s.auc <= 1.0, name
        assert s.slices is not None and s.slices[0]["slice"] == "entire dataset"
        json.dumps(s.to_dict(), allow_nan=False)
    assert results["loss"].auc > 0.5
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_one_per_record_gaussian_fit_serves_lira_reference_and_fedmia():
    from fedaudit.attacks.gaussian import MIN_STD, record_gaussians

    values = np.array([[1.0, 2.0, 5.0, 7.0], [3.0, 2.0, np.nan, 7.0], [5.0, 2.0, np.nan, np.nan]])
    mean, sd = record_gaussians(values, variance="record", few="nan")
    np.testing.assert_allclose(mean, [3.0, 2.0, 5.0, 7.0])
    np.testing.assert_allclose(sd[[0, 1, 3]], [2.0, MIN_STD, MIN_STD])   # sample sd, floored at MIN_STD
    assert np.isnan(sd[2])                                            # one value only
    pooled = np.sqrt(8.0 / (2 + 2 + 0 + 1))                           # squared deviations over sum(count - 1)
    np.testing.assert_allclose(record_gaussians(values, variance="pooled")[1], pooled)
    np.testing.assert_allclose(record_gaussians(values, variance="record")[1], [2.0, MIN_STD, pooled, MIN_STD])
    np.testing.assert_allclose(record_gaussians(values, variance="mle")[1], [np.sqrt(8 / 3), MIN_STD, MIN_STD, MIN_STD])
    mean, sd = record_gaussians(np.array([[np.nan, 1.0]]), variance="pooled", pooled_fallback=1.0)
    assert np.isnan(mean[0]) and mean[1] == 1.0 and sd[1] == 1.0     # no record with two values: the fallback


def saturated_inputs(seed=0, n=1000, m=1000, R=4, C=10, boost=3.0, centre=8.0, signal=True):
    """A confident target: true-class margins around ``centre`` (p above 0.99 for most records at T = 1), each
    record with its own difficulty; members (and a reference model's IN records) gain ``boost``."""
    rng = np.random.default_rng(seed)

    def logits(margin, labels):
        z = rng.normal(0, 0.3, margin.shape + (C,))
        np.put_along_axis(z, np.broadcast_to(labels[:, None], z.shape[:-1] + (1,)), margin[..., None], axis=-1)
        return z

    yx, yz = rng.integers(0, C, n), rng.integers(0, C, m)
    bx, bz = rng.normal(centre, 2.0, n), rng.normal(centre, 2.0, m)
    member = rng.random(n) < 0.5
    xin, zin = rng.random((R, n)).argsort(axis=0) < R // 2, rng.random((R, m)) < 0.5
    b = boost if signal else 0.0
    common = dict(target_logits=logits(bx + b * member + rng.normal(0, 1, n), yx), labels=yx,
                  population_logits=logits(bz + rng.normal(0, 1, m), yz), population_labels=yz,
                  reference_population_logits=logits(bz + b * zin + rng.normal(0, 1, (R, m)), yz),
                  reference_population_in=zin)
    online = AttackInputs(**common, reference_logits=logits(bx + b * xin + rng.normal(0, 1, (R, n)), yx),
                          reference_in=xin)
    offline = AttackInputs(**common, reference_logits=logits(bx + rng.normal(0, 1, (R, n)), yx))
    return online, offline, member


def test_rmia_temperature_undoes_saturation_and_keeps_chance_without_signal():
    """At T = 1 a confident target's true-class probabilities sit near 1 and the ratio follows the reference
    models; the temperature the reference-model game picks restores the ranking (and finds nothing in noise)."""
    from fedaudit.metrics import summarize

    def roc_auc(name, inputs, member, **kw):
        s = run_score_attack(name, inputs, **kw)
        return auc(s[member], s[~member])

    def low_fpr(name, inputs, member, **kw):
        s = run_score_attack(name, inputs, **kw)
        return summarize(s[member], s[~member])

    online, offline, member = saturated_inputs()
    loss = roc_auc("loss", online, member)
    loss_1pct = low_fpr("loss", online, member)
    for name, inputs in (("rmia-online", online), ("rmia-offline", offline)):
        plain, tuned = roc_auc(name, inputs, member, temperature=1.0), roc_auc(name, inputs, member)
        assert tuned > plain + 0.05 and tuned > loss, (name, plain, tuned, loss)
        # at 1% FPR: the tuned attack names more than twice the loss threshold's members; at T = 1 it names fewer
        weak, strong = low_fpr(name, inputs, member, temperature=1.0), low_fpr(name, inputs, member)
        assert strong.tpr_at_1pct_ci[0] > 2 * loss_1pct.tpr_at_1pct, (name, strong.tpr_at_1pct, loss_1pct.tpr_at_1pct)
        assert weak.tpr_at_1pct_ci[1] < loss_1pct.tpr_at_1pct_ci[0], (name, weak.tpr_at_1pct, loss_1pct.tpr_at_1pct)
    t, a, table = tune_rmia(online.reference_logits, online.labels, online.in_mask(), offline=False)
    assert t > 1 and table[(t, a)] == max(table.values())
    online, offline, member = saturated_inputs(seed=1, signal=False)
    for name, inputs in (("rmia-online", online), ("rmia-offline", offline)):
        assert abs(roc_auc(name, inputs, member) - 0.5) < 0.06, name
