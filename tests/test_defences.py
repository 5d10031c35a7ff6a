"""Defences and the epsilon they buy: local DP, canary clients, and the privacy object per threat model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedaudit.canaries import CanaryBank, estimate_epsilon, gaussian_delta, gaussian_epsilon
from fedaudit.config import scenario_from_dict
from fedaudit.errors import ConfigError


def gaussian_mechanism_cosines(z: float, n: int, dims: int = 5000, per_release: int = 25, seed: int = 0):
    """Cosines of inserted and fresh unit canaries with releases ``sum(inserted) + N(0, z^2 I)`` (sensitivity 1)."""
    rng = np.random.default_rng(seed)
    inserted, fresh = [], []
    for _ in range(n // per_release):
        c = rng.standard_normal((2 * per_release, dims))
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        release = c[:per_release].sum(axis=0) + z * rng.standard_normal(dims)
        cos = c @ release / np.linalg.norm(release)
        inserted.append(cos[:per_release])
        fresh.append(cos[per_release:])
    return np.concatenate(inserted), np.concatenate(fresh)


def test_gaussian_curve_is_balle_and_wang():
    # the analytic curve agrees with dp-accounting's PLD accountant for one Gaussian mechanism
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    for z in (0.5, 1.0, 2.0):
        acc = pld_privacy_accountant.PLDAccountant()
        acc.compose(dp_event.GaussianDpEvent(z))
        assert gaussian_epsilon(1 / z, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)
    assert float(gaussian_delta(gaussian_epsilon(1.0, 1e-5), 1.0)) == pytest.approx(1e-5, rel=1e-3)
    assert gaussian_epsilon(0.0, 1e-5) == 0.0


@pytest.mark.parametrize("z", [0.5, 1.0, 2.0])
def test_canary_estimate_matches_the_gaussian_mechanism(z):
    inserted, fresh = gaussian_mechanism_cosines(z, n=2000, seed=int(10 * z))
    est = estimate_epsilon(inserted, fresh, 1e-5, seed=1)
    analytic = gaussian_epsilon(1 / z, 1e-5)
    assert est["epsilon"] == pytest.approx(analytic, rel=0.2)
    assert est["ci"][0] <= est["epsilon"] <= est["ci"][1]
    assert est["ci"][0] < analytic * 1.05 and est["ci"][1] > analytic * 0.95


def test_canary_estimate_without_insertion_is_near_zero():
    rng = np.random.default_rng(0)
    est = estimate_epsilon(rng.normal(0, 1, 1000), rng.normal(0, 1, 1000), 1e-5)
    assert est["epsilon"] < 0.8 and est["ci"][0] == 0.0


def test_canary_bank_is_seeded_and_unit():
    a, b = CanaryBank(50000, 10, seed=3), CanaryBank(50000, 10, seed=3)
    assert np.array_equal(a.inserted, b.inserted) and np.array_equal(a.coords, b.coords)
    assert np.allclose(np.linalg.norm(a.inserted, axis=1), 1, atol=1e-5)
    assert not np.array_equal(a.inserted, CanaryBank(50000, 10, seed=4).inserted)
    assert a.participation(2, 0.5).tolist() == b.participation(2, 0.5).tolist()


def test_local_dp_mod_noise_is_noise_multiplier_times_clipping_norm():
    from fedaudit.federation.client import local_dp_mod

    dp = scenario_from_dict({"dp": {"mode": "local", "noise_multiplier": 0.7, "clipping_norm": 2.0}}).dp
    mod = local_dp_mod(dp)
    std = mod.sensitivity * math.sqrt(2 * math.log(1.25 / mod.delta)) / mod.epsilon   # LocalDpMod's calibration
    assert std == pytest.approx(0.7 * 2.0) and mod.clipping_norm == 2.0


@pytest.mark.parametrize("raw, key", [
    ({"dp": {"mode": "local", "noise_multiplier": 0.0}}, "dp.noise_multiplier"),
    ({"dp": {"mode": "locall"}}, "dp.mode"),
    ({"audit": {"canaries": 2}}, "audit.canaries"),
    ({"audit": {"canaries": -1}}, "audit.canaries"),
    ({"audit": {"canaries": 10}, "federation": {"strategy": "fedadam"}}, "audit.canaries"),
    ({"audit": {"canaries": 1.5}}, "audit.canaries"),
])
def test_config_errors_for_the_new_keys(raw, key):
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(raw)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_privacy_object_per_threat_model():
    from fedaudit.privacy import privacy_object

    s = scenario_from_dict({"federation": {"clients": 4, "rounds": 3},
                            "dp": {"mode": "local", "noise_multiplier": 1.0}, "audit": {"canaries": 3}})
    obj = privacy_object(s, {1: [0, 1, 2, 3], 2: [0, 1], 3: [0]}, None, {})
    per = {c["client"]: c for c in obj["server"]["per_client"]}
    assert [per[k]["rounds"] for k in range(4)] == [3, 2, 1, 1]
    assert per[0]["accountant_epsilon"] > per[1]["accountant_epsilon"] > per[3]["accountant_epsilon"] > 0
    assert obj["server"]["accountant_epsilon"] == per[0]["accountant_epsilon"]
    assert obj["participant"]["accountant_epsilon"] < obj["server"]["accountant_epsilon"]
    for tm in ("server", "participant"):
        assert set(obj[tm]) >= {"accountant_epsilon", "canary_epsilon", "canary_epsilon_ci", "mia_epsilon_lower",
                                "delta"}
    central = privacy_object(scenario_from_dict({"dp": {"mode": "server", "noise_multiplier": 1.0}}), {}, None, {})
    assert central["server"]["accountant_epsilon"] is None and central["participant"]["accountant_epsilon"] > 0
    none = privacy_object(scenario_from_dict({}), {}, None, {})
    assert none["server"]["delta"] is None and none["participant"]["accountant_epsilon"] is None


# ---------------------------------------------------------------------------------------------------------------
# Full federations (each starts and stops its own Ray): as small as they can be and still show the effect
# ---------------------------------------------------------------------------------------------------------------

PURCHASE = {"data": {"dataset": "synthetic-purchase", "records": 400, "features": 100, "population_fraction": 0.2,
                     "test_fraction": 0.2},
            "model": {"name": "purchase-fcn"},
            "federation": {"clients": 3, "rounds": 2, "local_epochs": 40, "learning_rate": 0.003, "seed": 0},
            "audit": {"enabled": True, "attacks": ["loss"], "threat_models": ["server"], "inferences": []},
            "ray": {"num_cpus": 2}}


def _run(raw, tmp_path, name):
    from fedaudit.run import run_scenario

    out = run_scenario(scenario_from_dict(raw, default_name=name), tmp_path / name, progress=False)
    return json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None, out


def _with(base, **sections):
    raw = json.loads(json.dumps(base))
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def test_local_dp_brings_the_servers_attack_to_chance(tmp_path):
    plain, _ = _run(PURCHASE, tmp_path, "plain")
    assert plain["threat_models"]["server"]["auc"] > 0.9
    assert plain["privacy"]["server"]["accountant_epsilon"] is None
    # local DP's guarantee does not rest on the server's honesty: a server that runs gradient ascent on its targets
    # (in a federation of its own beside this one) stays at chance too
    local, out = _run(_with(PURCHASE, dp={"mode": "local", "noise_multiplier": 5.0},
                            audit={"canaries": 30, "threat_models": ["server", "active-server"], "active": {"targets": 400}}),
                      tmp_path, "local")
    assert abs(local["threat_models"]["server"]["auc"] - 0.5) < 0.05
    assert abs(local["threat_models"]["active-server"]["auc"] - 0.5) < 0.05
    server = local["privacy"]["server"]
    assert 0 < server["accountant_epsilon"] < 3 and all(c["rounds"] == 2 for c in server["per_client"])
    assert all(c["mia_epsilon_lower"] is not None for c in server["per_client"])
    assert server["canary_epsilon_ci"][0] <= server["accountant_epsilon"] * 1.2
    assert "Against the server" in (out / "report.html").read_text()


def test_central_dp_canary_epsilon_is_close_to_the_accountants(tmp_path):
    raw = _with(PURCHASE, dp={"mode": "server", "noise_multiplier": 1.0},
                audit={"enabled": False, "canaries": 300}, federation={"local_epochs": 2})
    _, out = _run(raw, tmp_path, "central")
    from fedaudit.config import load_scenario
    from fedaudit.privacy import run_privacy

    privacy = run_privacy(out, load_scenario(out / "scenario.toml", run_dir_file=True), {})
    part = privacy["participant"]
    assert 0.5 * part["accountant_epsilon"] <= part["canary_epsilon"] <= 1.2 * part["accountant_epsilon"]
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert all("accuracy_without_canaries" in r for r in rows)
    # canaries are never audited or counted as clients
    assert all(r["clients"] == [0, 1, 2] for r in rows)


def test_canary_rounds_survive_a_resume(tmp_path):
    from fedaudit.federation.canary import CanaryAudit

    s = scenario_from_dict({"dp": {"mode": "local", "noise_multiplier": 1.0}, "audit": {"canaries": 5}})
    w0 = [np.zeros((30, 4), dtype=np.float32), np.zeros(4, dtype=np.float32)]
    audit = CanaryAudit(s, w0, tmp_path)
    weights = w0
    after = {}
    for t in (1, 2):
        new = audit.add_to(t, weights, real_clients=2)
        assert not np.allclose(new[0], weights[0])          # canaries (and their local noise) moved the aggregate
        without = audit.observe(t, weights, new)
        assert np.allclose(without[0], w0[0], atol=1e-5)     # nothing but canaries moved it
        after[t] = audit.contribution.copy()
        weights = new
    # the checkpoint of round 1 is where a resume starts: round 2's canary record is dropped, its contribution too
    again = CanaryAudit(s, w0, tmp_path)
    assert sorted(again.rows) == [1, 2]
    again.forget_after(1)
    assert sorted(again.rows) == [1] and np.allclose(again.contribution, after[1])
    assert np.isfinite(again.rows[1]["server_inserted"]).all()      # local DP: the server saw every canary's update
