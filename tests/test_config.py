import pytest

from fedaudit.config import Scenario, load_scenario, scenario_from_dict
from fedaudit.errors import ConfigError

from conftest import SCENARIOS


def test_quickstart_loads_and_round_trips(tmp_path):
    s = load_scenario(SCENARIOS / "quickstart.toml")
    assert s.name == "quickstart" and s.federation.clients == 10 and s.data.dataset == "digits"
    path = tmp_path / "resolved.toml"
    path.write_text(s.to_toml())
    again = load_scenario(path)
    assert again.to_dict() == s.to_dict()


def test_overrides_apply_and_are_validated():
    s = load_scenario(SCENARIOS / "quickstart.toml", {"federation.rounds": 2, "federation.clients": 3})
    assert (s.federation.rounds, s.federation.clients) == (2, 3)
    with pytest.raises(ConfigError, match="federation.clients"):
        s.with_overrides({"federation.clients": 0})


def test_open_sections_forward_options():
    s = scenario_from_dict({"data": {"dataset": "synthetic-purchase", "records": 300, "classes": 5},
                            "model": {"name": "mlp", "hidden": [16]}})
    assert s.data.options == {"records": 300, "classes": 5}
    assert s.model.options == {"hidden": [16]}
    assert scenario_from_dict(s.to_dict()).to_dict() == s.to_dict()


@pytest.mark.parametrize("raw, path", [
    ({"federation": {"clientz": 3}}, "federation.clientz"),
    ({"federation": {"clients": 0}}, "federation.clients"),
    ({"federation": {"clients": -4}}, "federation.clients"),
    ({"federation": {"rounds": "five"}}, "federation.rounds"),
    ({"federation": {"fraction": 1.5}}, "federation.fraction"),
    ({"federation": {"strategy": "fedsgd"}}, "federation.strategy"),
    ({"federation": {"optimizer": "lbfgs"}}, "federation.optimizer"),
    ({"federation": {"partition": "dirichlet:x"}}, "federation.partition"),
    ({"audit": {"threat_models": ["insider"]}}, "audit.threat_models"),
    ({"audit": {"attack_fraction": 1.0}}, "audit.attack_fraction"),
    ({"dp": {"mode": "shuffle"}}, "dp.mode"),
    ({"data": {"test_fraction": 0.6, "population_fraction": 0.5}}, "data.test_fraction"),
    ({"unknown": {}}, "unknown"),
    ({"audit": {"enabled": "yes"}}, "audit.enabled"),
    ({"audit": {"source_gradients": "conv"}}, "audit.source_gradients"),
    # settings a federation audit never read are rejected, not silently accepted
    ({"audit": {"layers": [0]}}, "audit.layers"),
    ({"audit": {"layers": [2.5]}}, "audit.layers"),
    ({"audit": {"layers": "dense_1"}}, "audit.layers"),
    ({"audit": {"epochs": 30}}, "audit.epochs"),
    ({"federation": {"partition": "dirichlet:0"}}, "federation.partition"),
    ({"federation": {"partition": "shards:0.5"}}, "federation.partition"),
    ({"federation": {"server_learning_rate": 0.0}}, "federation.server_learning_rate"),
    ({"federation": {"server_momentum": 1.0}}, "federation.server_momentum"),
    ({"ray": {"address": "auto", "num_cpus": 4}}, "ray.num_cpus"),
    ({"data": {"options": {"dataset": "x"}}}, "data.options.dataset"),
    ({"model": {"hidden": [8], "options": {"hidden": [4]}}}, "model.options.hidden"),
    ({"audit": {"ke\ny": 1}}, 'audit."ke\\ny"'),      # an odd key is quoted: the message stays one line
])
def test_bad_values_name_the_key(raw, path):
    with pytest.raises(ConfigError) as info:
        scenario_from_dict(raw)
    assert str(info.value).startswith(path)


def test_malformed_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nclients = 3\n")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_scenario(bad)
    with pytest.raises(ConfigError, match="no such scenario file"):
        load_scenario(tmp_path / "missing.toml")


def test_defaults_are_valid():
    assert isinstance(scenario_from_dict({}), Scenario)


def test_the_attacks_a_shipped_scenario_names_are_accepted_and_unknown_ones_rejected():
    from fedaudit.attacks.base import attack_spec

    named = load_scenario(SCENARIOS / "overfit.toml").audit.attacks
    assert {"whitebox", "blackbox", "loss", "lira-offline", "rmia-offline"} <= set(named)
    for name in named:
        attack_spec(name)                  # each resolves to a registered attack
    with pytest.raises(ConfigError, match=r"^audit\.attacks: unknown attack 'lira-onlin'; allowed: .*lira-offline"):
        scenario_from_dict({"audit": {"attacks": ["loss", "lira-onlin"]}})
