"""Scenarios: typed, validated, loaded from TOML. Every error names the key path and what is allowed."""

from __future__ import annotations

import copy
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedaudit.errors import ConfigError
from fedaudit.threat_model import threat_model_names

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedavgm")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
# ATTACKS (module attribute, computed on first use): every attack name the registry of fedaudit.attacks knows
# (trained and score attacks and aliases, by headline rank); its metadata imports no TensorFlow.
DP_MODES = ("none", "server", "client", "local")
SECAGG_STRATEGIES = ("fedavg", "fedprox")   # under secure aggregation (Flower's legacy strategy API, no server state)
SECAGG_DP_MODES = ("none", "client")        # the DP modes fedaudit.federation.secagg wires around SecAgg+
# Strategies whose aggregate is the (uniform) mean of the updates, into which canary clients can be added.
CANARY_STRATEGIES = ("fedavg", "fedprox")
PARTITION_RE = re.compile(r"^(iid|dirichlet:[0-9.eE+-]+|dirichlet|shards:\d+|shards)$")
# What fedaudit.flower records for a Flower App's own strategy ("flower:FedMedian") and for records that the app
# assigned to partitions itself; a scenario with either describes an app's run and cannot be run by `fedaudit run`.
FLOWER_STRATEGY_PREFIX = "flower:"
GIVEN_PARTITION = "given"


@dataclass
class DataConfig:
    dataset: str = "digits"
    population_fraction: float = 0.25
    test_fraction: float = 0.2
    options: dict = field(default_factory=dict)   # passed to the dataset loader


@dataclass
class ModelConfig:
    name: str = "mlp"
    options: dict = field(default_factory=dict)   # passed to the model builder


@dataclass
class FederationConfig:
    clients: int = 10
    rounds: int = 5
    fraction: float = 1.0
    local_epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 0.001
    optimizer: str = "adam"
    strategy: str = "fedavg"
    partition: str = "iid"
    seed: int = 0
    proximal_mu: float = 0.01
    server_learning_rate: float = 0.1
    server_momentum: float = 0.9
    # Flower's SecAgg+: the server sees only the sum of the updates (fedaudit.federation.secagg)
    secure_aggregation: bool = False
    secagg_clipping_range: float = 8.0            # every weight is clipped to [-range, range] before quantisation
    secagg_quantization_range: int = 2 ** 22      # integers per weight
    secagg_modulus_range: int = 2 ** 32           # the masks' modulus (a power of two above the sum's range)


@dataclass
class DPConfig:
    mode: str = "none"
    noise_multiplier: float = 0.5
    clipping_norm: float = 1.0
    delta: float = 1e-5


@dataclass
class ActiveConfig:
    """What the adversaries that deviate from the protocol do (``[audit.active]``, see fedaudit.federation.active)."""

    targets: int = 200             # target records: half members, half population-sample records, drawn from the seed
    ascent_steps: int = 10         # gradient-ascent steps on the targets (active server, active participant)
    ascent_lr: float = 0.03        # their step size
    start_round: int = 1           # the first round the adversary deviates in
    isolated_client: int = -1      # the client the isolating server keeps apart (-1: drawn from the seed)
    participant: int = -1          # the active participant (-1: drawn from the seed)
    inconsistent_client: int = -1  # under secure aggregation, the client the active server singles out (-1: drawn)


#: ``[audit] source_gradients``: the gradient norms among the source sample's features: those of the dense layers
#: (they factorise: cheap) or of every gradient layer (convolutions too: several times the cost of a forward pass)
SOURCE_GRADIENTS = ("dense", "all")


@dataclass
class AuditConfig:
    enabled: bool = False
    threat_models: list = field(default_factory=lambda: ["server", "participant"])
    attack_fraction: float = 0.5
    attacks: list = field(default_factory=lambda: ["whitebox", "blackbox", "loss"])
    reference_models: int = 0
    folds: int = 5
    population_sample: int = 1000   # population records scored under every audited client model (server view)
    source_sample: int = 1000       # members attributed to a client by source inference, every round
    source_gradients: str = "dense"  # the source sample's gradient norms: "dense" layers only (fast) or "all"
    keep_round_arrays: bool = True  # false: keep only the per-round arrays the aggregation and the report read
    gradients: list = field(default_factory=list)   # layers whose kernel gradient norms are features (1-based)
    layers: list = field(default_factory=list)      # layers whose outputs give activation features (1-based)
    canaries: int = 0               # canary clients added to every aggregation (0: none), see fedaudit.canaries
    active: ActiveConfig = field(default_factory=ActiveConfig)   # [audit.active]: the deviating adversaries
    inferences: list = field(default_factory=lambda: ["labels"])  # beyond membership (fedaudit.inferences)
    sensitive_attribute: str = ""         # the attribute inference's column (index or name; "": none), tabular data
    label_clients: int = 50               # clients whose label mix the label inference reads per round (its cost bound)
    reconstruction_clients: int = 1       # clients whose update the reconstruction inverts per audited round
    reconstruction_iterations: int = 300  # optimisation steps per reconstruction (its cost bound)


@dataclass
class RayConfig:
    address: str = ""          # empty: start a local Ray bound to 127.0.0.1
    num_cpus: int = 0          # CPUs of the local Ray (0: all of this machine's)
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    auditor_gpus: float = 0.0
    audit_tasks: int = 0       # Ray tasks per audited round (0: one per alive node; 1 on one node: in the auditor)
    audit_cpus: float = 0.0    # CPUs each audit task asks for (0: shares the CPUs that Flower's client pool holds)


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "federation": FederationConfig,
    "dp": DPConfig,
    "audit": AuditConfig,
    "ray": RayConfig,
}
# Keys that earlier versions accepted and wrote into every resolved scenario.toml without ever using them. A
# scenario file that sets one is rejected like any unknown key; a run directory's own scenario.toml (read
# with ``run_dir_file=True``) may still hold them and is read without them.
RETIRED = {"audit": ("epochs",)}
# Sections whose unknown keys are options for a registered component rather than errors.
OPEN_SECTIONS = {"data": ("dataset", "options"), "model": ("name", "options")}


@dataclass
class Scenario:
    name: str = "scenario"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    source: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        for section, (_, opts) in OPEN_SECTIONS.items():
            d[section].update(_in_key_order(d[section].pop(opts)))
        return d

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def with_overrides(self, overrides: dict[str, Any]) -> "Scenario":
        """A copy with dotted-path overrides applied (``{"federation.rounds": 3}``), validated again."""
        raw = self.to_dict()
        for path, value in overrides.items():
            if value is None:
                continue
            set_path(raw, path, value)
        return scenario_from_dict(raw, source=self.source)


def set_path(raw: dict, path: str, value) -> None:
    parts = path.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: {part!r} is not a table")
    node[parts[-1]] = value


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key_text(key) -> str:
    """A key as it appears in a key path: bare keys as they are, others quoted (one line, always)."""
    key = str(key)
    return key if _BARE_KEY.match(key) else tomli_w.dumps({key: 0}).rstrip("\n").rsplit(" = ", 1)[0]


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "a table"}[t]


def _coerce(path: str, value, default):
    t = type(default)
    if t is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, t):
        raise ConfigError(f"{path}: expected {_type_name(t)}, got {value!r}")
    return copy.deepcopy(value)


#: keys that take a column index or a column name (an index is kept as its digits)
INDEX_OR_NAME = {"audit.sensitive_attribute"}


def _section(name: str, raw, cls):
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a table, got {raw!r}")
    defaults = cls()
    known = {f.name for f in fields(cls)}
    values, options = {}, {}
    open_keys = OPEN_SECTIONS.get(name)
    for key, value in raw.items():
        path = f"{name}.{_key_text(key)}"
        if open_keys and key == open_keys[1]:
            table = _coerce(path, value, {})
            for opt, v in table.items():
                opt_path = f"{path}.{_key_text(opt)}"
                if opt in known:
                    raise ConfigError(f"{opt_path}: an option cannot be named like a key of [{name}] "
                                      f"({', '.join(sorted(known))}); rename the option")
                if opt in options:
                    raise ConfigError(f"{opt_path}: given twice (also as {name}.{_key_text(opt)})")
                options[opt] = copy.deepcopy(v)
        elif key in known and path in INDEX_OR_NAME and isinstance(value, int) and not isinstance(value, bool):
            values[key] = str(value)                  # a column index, kept as text beside column names
        elif key in known and is_dataclass(getattr(defaults, key)):    # a sub-table ([audit.active])
            values[key] = _section(path, value, type(getattr(defaults, key)))
        elif key in known:
            values[key] = _coerce(path, value, getattr(defaults, key))
        elif open_keys:
            if key in options:
                raise ConfigError(f"{path}: given twice (also as {name}.{open_keys[1]}.{_key_text(key)})")
            options[key] = copy.deepcopy(value)
        else:
            raise ConfigError(f"{path}: unknown key; allowed in [{name}]: {', '.join(sorted(known))}")
    if open_keys:
        values[open_keys[1]] = options
    return cls(**values)


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {message}")


def validate(s: Scenario) -> Scenario:
    f = s.federation
    _check(f.clients >= 1, "federation.clients", f"must be at least 1, got {f.clients}")
    _check(f.rounds >= 1, "federation.rounds", f"must be at least 1, got {f.rounds}")
    _check(0 < f.fraction <= 1, "federation.fraction", f"must be in (0, 1], got {f.fraction}")
    _check(f.local_epochs >= 1, "federation.local_epochs", f"must be at least 1, got {f.local_epochs}")
    _check(f.batch_size >= 1, "federation.batch_size", f"must be at least 1, got {f.batch_size}")
    _check(f.learning_rate > 0, "federation.learning_rate", f"must be positive, got {f.learning_rate}")
    _check(f.optimizer in OPTIMIZERS, "federation.optimizer",
           f"unknown optimizer {f.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    _check(f.strategy in STRATEGIES or re.match(rf"^{FLOWER_STRATEGY_PREFIX}[A-Za-z_][A-Za-z0-9_]*$", f.strategy),
           "federation.strategy", f"unknown strategy {f.strategy!r}; allowed: {', '.join(STRATEGIES)}")
    _check(_partition_ok(f.partition) or f.partition == GIVEN_PARTITION, "federation.partition",
           f"got {f.partition!r}; allowed: 'iid', 'dirichlet:ALPHA' (ALPHA > 0), 'shards:N' (N >= 1)")
    _check(f.proximal_mu >= 0, "federation.proximal_mu", f"must be >= 0, got {f.proximal_mu}")
    _check(f.server_learning_rate > 0, "federation.server_learning_rate",
           f"must be positive, got {f.server_learning_rate}")
    _check(0 <= f.server_momentum < 1, "federation.server_momentum", f"must be in [0, 1), got {f.server_momentum}")
    _check(f.seed >= 0, "federation.seed", f"must be >= 0, got {f.seed}")
    d = s.data
    _check(0 <= d.population_fraction < 1, "data.population_fraction", f"must be in [0, 1), got {d.population_fraction}")
    _check(0 < d.test_fraction < 1, "data.test_fraction", f"must be in (0, 1), got {d.test_fraction}")
    _check(d.population_fraction + d.test_fraction < 1, "data.test_fraction",
           "data.population_fraction + data.test_fraction must be below 1 (clients need records)")
    dp = s.dp
    _check(dp.mode in DP_MODES, "dp.mode", f"got {dp.mode!r}; allowed: {', '.join(DP_MODES)}")
    _check(dp.noise_multiplier >= 0, "dp.noise_multiplier", f"must be >= 0, got {dp.noise_multiplier}")
    _check(dp.clipping_norm > 0, "dp.clipping_norm", f"must be positive, got {dp.clipping_norm}")
    _check(0 < dp.delta < 1, "dp.delta", f"must be in (0, 1), got {dp.delta}")
    _validate_secagg(s)
    _check(dp.mode != "local" or dp.noise_multiplier > 0, "dp.noise_multiplier",
           f"local DP (dp.mode = \"local\") needs a positive noise multiplier, got {dp.noise_multiplier}")
    a = s.audit
    registered = threat_model_names()
    for tm in a.threat_models:
        _check(tm in registered, "audit.threat_models", f"unknown threat model {tm!r}; allowed: {', '.join(registered)}")
    _check(len(a.threat_models) > 0 or not a.enabled, "audit.threat_models", "must name at least one threat model")
    allowed = attack_names()
    for at in a.attacks:
        _check(isinstance(at, str) and at in allowed, "audit.attacks",
               f"unknown attack {at!r}; allowed: {', '.join(allowed)}")
    _validate_inferences(a)
    _check(0 < a.attack_fraction < 1, "audit.attack_fraction", f"must be in (0, 1), got {a.attack_fraction}")
    _check(a.reference_models >= 0, "audit.reference_models", f"must be >= 0, got {a.reference_models}")
    _check(a.folds >= 2, "audit.folds", f"must be at least 2, got {a.folds}")
    for key in ("population_sample", "source_sample"):
        _check(getattr(a, key) >= 2, f"audit.{key}", f"must be at least 2, got {getattr(a, key)}")
    _check(a.source_gradients in SOURCE_GRADIENTS, "audit.source_gradients",
           f"got {a.source_gradients!r}; allowed: {', '.join(SOURCE_GRADIENTS)}")
    for key in ("gradients", "layers"):
        for v in getattr(a, key):
            _check((isinstance(v, int) and not isinstance(v, bool) and v >= 1) or (isinstance(v, str) and v != ""),
                   f"audit.{key}", f"entries are 1-based layer indices or layer names, got {v!r}")
    _validate_active(s)
    _check(a.canaries == 0 or a.canaries >= 3, "audit.canaries",
           f"must be 0 (no canaries) or at least 3 (to fit their distribution), got {a.canaries}")
    _check(a.canaries == 0 or f.strategy in CANARY_STRATEGIES, "audit.canaries",
           f"canary clients are added to a mean of updates; federation.strategy {f.strategy!r} aggregates "
           f"otherwise; allowed with canaries: {', '.join(CANARY_STRATEGIES)}")
    r = s.ray
    _check(r.num_cpus >= 0, "ray.num_cpus", f"must be >= 0, got {r.num_cpus}")
    _check(not (r.address and r.num_cpus), "ray.num_cpus",
           f"sizes a local Ray only; with ray.address = {r.address!r} the run uses the cluster's CPUs "
           "(set ray.num_cpus = 0 or ray.address = \"\")")
    _check(r.client_cpus > 0, "ray.client_cpus", f"must be positive, got {r.client_cpus}")
    _check(r.audit_tasks >= 0, "ray.audit_tasks", f"must be >= 0 (0: one per node), got {r.audit_tasks}")
    for key in ("client_gpus", "auditor_gpus", "audit_cpus"):
        _check(getattr(r, key) >= 0, f"ray.{key}", f"must be >= 0, got {getattr(r, key)}")
    _check(bool(re.match(r"^[A-Za-z0-9_.-]+$", s.name)), "name",
           f"got {s.name!r}; allowed: letters, digits, '.', '_' and '-'")
    return s


def _validate_inferences(a: AuditConfig) -> None:
    """``[audit] inferences`` against the registry (:mod:`fedaudit.inferences`) and their settings."""
    from fedaudit.inferences.base import inference_names

    allowed = inference_names()
    _check(isinstance(a.inferences, list), "audit.inferences", f"must be a list of names; allowed: {', '.join(allowed)}")
    for name in a.inferences:
        _check(isinstance(name, str) and name in allowed, "audit.inferences",
               f"unknown inference {name!r}; allowed: {', '.join(allowed)}")
    _check(len(set(a.inferences)) == len(a.inferences), "audit.inferences", f"names an inference twice: {a.inferences}")
    for key in ("label_clients", "reconstruction_clients", "reconstruction_iterations"):
        v = getattr(a, key)
        _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"audit.{key}", f"must be at least 1, got {v!r}")
    _check("attributes" not in a.inferences or a.sensitive_attribute != "", "audit.inferences",
           "\"attributes\" needs audit.sensitive_attribute (a column index or name)")


def _validate_secagg(s: Scenario) -> None:
    """Secure aggregation's combinations: each error names the key and what works with SecAgg+."""
    f = s.federation
    _check(f.secagg_clipping_range > 0, "federation.secagg_clipping_range",
           f"must be positive, got {f.secagg_clipping_range}")
    _check(f.secagg_quantization_range >= 2, "federation.secagg_quantization_range",
           f"must be at least 2, got {f.secagg_quantization_range}")
    m = f.secagg_modulus_range
    _check(m > f.secagg_quantization_range and m <= 2 ** 32 and m & (m - 1) == 0, "federation.secagg_modulus_range",
           f"must be a power of two above federation.secagg_quantization_range ({f.secagg_quantization_range}) "
           f"and at most 2**32, got {m}")
    if not f.secure_aggregation:
        return
    sampled = max(1, int(f.clients * f.fraction))
    _check(f.strategy in SECAGG_STRATEGIES or f.strategy.startswith(FLOWER_STRATEGY_PREFIX), "federation.strategy",
           f"{f.strategy!r} keeps server state that fedaudit does not carry under secure aggregation; with "
           f"federation.secure_aggregation = true allowed: {', '.join(SECAGG_STRATEGIES)}")
    _check(sampled >= 2, "federation.secure_aggregation",
           f"needs at least 2 clients per round (federation.clients x federation.fraction = {sampled}): a sum of one "
           "update is that update")
    _check(sampled * f.secagg_quantization_range < m, "federation.secagg_quantization_range",
           f"{f.secagg_quantization_range} x {sampled} clients per round must stay below federation.secagg_modulus_range "
           f"({m}), or the masked sum overflows")
    _check(s.dp.mode != "server", "dp.mode",
           "'server' clips each client's update on the server, which secure aggregation hides from it; with "
           "federation.secure_aggregation = true use dp.mode = 'client' (clients clip, the server adds noise to the sum)")
    _check(s.dp.mode in SECAGG_DP_MODES, "dp.mode",
           f"{s.dp.mode!r} is not wired under secure aggregation; with federation.secure_aggregation = true allowed: "
           f"{', '.join(SECAGG_DP_MODES)}")
    _check(s.audit.canaries == 0, "audit.canaries",
           "canary clients are added to the aggregate by the Message-API strategy, which secure aggregation replaces; "
           "with federation.secure_aggregation = true allowed: 0")


def attack_names() -> list:
    """Every attack ``[audit] attacks`` accepts, from the registry (:func:`fedaudit.attacks.base.attack_names`)."""
    from fedaudit.attacks.base import attack_names as registered

    return registered()


def __getattr__(name: str):
    if name == "ATTACKS":
        return tuple(attack_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _partition_ok(spec: str) -> bool:
    if not PARTITION_RE.match(spec):
        return False
    method, _, param = spec.partition(":")
    if not param:
        return True
    try:
        value = float(param)
    except ValueError:
        return False
    return math.isfinite(value) and value > 0 and (method != "shards" or value >= 1)


def _validate_active(s: Scenario) -> None:
    from fedaudit.threat_model import get_threat_model

    a, f = s.audit.active, s.federation
    _check(a.targets >= 2, "audit.active.targets", f"must be at least 2 (members and non-members), got {a.targets}")
    _check(a.ascent_steps >= 0, "audit.active.ascent_steps", f"must be >= 0, got {a.ascent_steps}")
    _check(a.ascent_lr >= 0, "audit.active.ascent_lr", f"must be >= 0, got {a.ascent_lr}")
    _check(1 <= a.start_round <= f.rounds, "audit.active.start_round",
           f"must be a round of the run (1 to federation.rounds = {f.rounds}), got {a.start_round}")
    for key in ("isolated_client", "participant", "inconsistent_client"):
        value = getattr(a, key)
        _check(value == -1 or 0 <= value < f.clients, f"audit.active.{key}",
               f"must be -1 (drawn from the seed) or a client id in 0..{f.clients - 1}, got {value}")
    deviating = [tm for tm in s.audit.threat_models if get_threat_model(tm).deviation]
    if deviating and f.secure_aggregation:
        _check("isolating-server" not in deviating, "audit.threat_models", "isolating-server under secure "
               "aggregation: the server never holds one client's reply to keep it apart; allowed under secure "
               "aggregation: active-server (it singles one client out by model inconsistency), active-participant")
    if deviating:
        _check(f.clients >= 2, "federation.clients", f"an adversary that deviates from the protocol needs at least 2 "
               f"clients (one it targets, one it does not), got {f.clients}")


def scenario_from_dict(raw: dict, source: str = "", default_name: str = "scenario") -> Scenario:
    raw = dict(raw)
    name = raw.pop("name", default_name)
    if not isinstance(name, str):
        raise ConfigError(f"name: expected a string, got {name!r}")
    sections = {}
    for key, value in raw.items():
        if key not in SECTIONS:
            raise ConfigError(f"{_key_text(key)}: unknown key; allowed at the top level: name, {', '.join(SECTIONS)}")
        sections[key] = _section(key, value, SECTIONS[key])
    return validate(Scenario(name=name, source=source, **sections))


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such scenario file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the scenario file: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                          "TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None, *,
                  run_dir_file: bool = False) -> Scenario:
    """Read, validate and (optionally) override a scenario file.

    ``run_dir_file``: the file is a run directory's resolved scenario.toml, which earlier versions wrote with
    the :data:`RETIRED` keys; they are dropped (they never changed what a run did).
    """
    path = Path(path)
    raw = read_toml(path)
    if run_dir_file:
        for section, keys in RETIRED.items():
            if isinstance(raw.get(section), dict):
                for key in keys:
                    raw[section].pop(key, None)
    if "suite" in raw:
        raise ConfigError(f"{path}: this is a suite (it has a [suite] table), not a single scenario")
    try:
        scenario = scenario_from_dict(raw, source=str(path), default_name=path.stem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return scenario.with_overrides(overrides) if overrides else scenario


def _in_key_order(value):
    """``value`` with the keys of every table in it sorted: the order a resolved file's tables come back in,
    whatever order the TOML writer puts sub-tables and arrays of tables in."""
    if isinstance(value, dict):
        return {k: _in_key_order(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_in_key_order(v) for v in value]
    return value


def dumps_toml(d: dict) -> str:
    """A resolved scenario as TOML: top-level keys, then one table per section (its sub-tables after it)."""
    try:
        return tomli_w.dumps(d)
    except TypeError as exc:        # a value TOML has no type for (None, an object)
        raise ConfigError(f"cannot write the scenario to TOML: {exc}") from None
