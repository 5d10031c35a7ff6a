"""The privacy-utility frontier: which defence, at which strength, brings a membership risk below a target, and what it
costs in accuracy (what a DPIA calls "the measures envisaged to address the risks", GDPR Art. 35(7)(d)).

``fedaudit frontier FILE`` takes a scenario (the defaults below apply) or a frontier file, a TOML file with a
``[frontier]`` table::

    [frontier]
    base = "overfit.toml"                     # the scenario, relative to this file
    target = "server.tpr_at_1pct <= 0.02"     # THREAT_MODEL.METRIC <= NUMBER, or epsilon_lower / accountant_epsilon
    defences = ["local_dp", "central_dp"]     # see DEFENCES
    repeats = 1                               # seeds per configuration (federation.seed, seed + 1, ...)
    refine = 1                                # bisection steps where a defence's grid crosses the target
    clipping_norms = [1.0]                    # each DP defence runs at each of these
    mode = "sequential"                       # or "ray": every run a Ray task, as in a suite
    cpus_per_run = 2

    [frontier.grid]                           # a defence's coarse grid, weakest first (default: DEFENCES')
    local_dp = [0.003, 0.03, 0.3]

    [frontier.set]                            # overrides for every run
    "federation.rounds" = 3

The search runs the scenario without a defence, then each defence's coarse grid, then bisects each defence between
the strongest setting that misses the target and the weakest that meets it (``refine`` times; where no setting meets
it, the step goes beyond the strongest instead). A defence whose DP
guarantee does not cover the target's adversary (central DP against the server, which sees each update before the
noise: the threat model's ``dp_covers``) runs only its strongest setting, to show what it does. Each configuration
runs ``repeats`` times with consecutive seeds; its interval is the t interval over the seeds (one seed: the run's own
95% Clopper-Pearson interval, where the metric has one).

The runs are the directories of a suite (``OUT/<label>-seed<N>/`` and ``OUT/suite.json``, run by
:func:`fedaudit.suite.execute_cases`): running the same frontier into the same folder skips every finished run and
resumes or reruns the others. ``OUT/frontier.json`` holds every configuration's figures, the Pareto front and the
cheapest configuration that meets the target; ``OUT/frontier.html`` shows them.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedaudit.config import Scenario, load_scenario, read_toml
from fedaudit.errors import ConfigError
from fedaudit.schema import HEADLINE_KEYS

log = logging.getLogger(__name__)

#: the metrics a target may name per threat model (lower is safer for each)
TM_METRICS = (*HEADLINE_KEYS, "epsilon_lower")
#: metrics a target may name on their own: the worst measured epsilon over threat models, the accountant's
RUN_METRICS = ("epsilon_lower", "accountant_epsilon")
OPERATORS = ("<=", "<")
FRONTIER_KEYS = ("base", "target", "defences", "repeats", "refine", "clipping_norms", "mode", "cpus_per_run", "grid",
                 "set", "name", "title")
DEFAULT_TARGET = "server.tpr_at_1pct <= 0.02"


# ----------------------------------------------------------------------------------------------------
# The target
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """``threat_model.metric op value`` (``threat_model`` None: a run-level metric)."""

    threat_model: str | None
    metric: str
    op: str
    value: float

    @property
    def text(self) -> str:
        return f"{self.threat_model + '.' if self.threat_model else ''}{self.metric} {self.op} {self.value:g}"

    def met(self, measured: float) -> bool:
        if not math.isfinite(measured):
            return False
        return measured <= self.value if self.op == "<=" else measured < self.value


_TARGET = re.compile(r"^\s*(?:([A-Za-z_][\w-]*)\.)?([A-Za-z_]\w*)\s*(<=|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
                     r"\s*$")


def parse_target(text: str, threat_models=None) -> Target:
    """Parse a risk target such as ``server.tpr_at_1pct <= 0.02`` (no evaluation: a fixed grammar)."""
    from fedaudit.threat_model import threat_model_names

    names = list(threat_models) if threat_models is not None else threat_model_names()
    allowed = (f"THREAT_MODEL.METRIC <= NUMBER with THREAT_MODEL one of {', '.join(names)} and METRIC one of "
               f"{', '.join(TM_METRICS)}; or {' / '.join(RUN_METRICS)} <= NUMBER (e.g. {DEFAULT_TARGET!r}); "
               f"operators: {', '.join(OPERATORS)}")
    m = _TARGET.match(text) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(f"target {text!r}: not understood; expected {allowed}")
    tm, metric, op, value = m.group(1), m.group(2), m.group(3), float(m.group(4))
    if tm is None and metric not in RUN_METRICS:
        raise ConfigError(f"target {text!r}: {metric!r} needs a threat model or is unknown; expected {allowed}")
    if tm is not None and tm not in names:
        raise ConfigError(f"target {text!r}: unknown threat model {tm!r}; expected {allowed}")
    if tm is not None and metric not in TM_METRICS:
        raise ConfigError(f"target {text!r}: unknown metric {metric!r}; expected {allowed}")
    return Target(tm, metric, op, value)


# ----------------------------------------------------------------------------------------------------
# Defences
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defence:
    """One measure and the scenario key that sets its strength (``values`` weakest first)."""

    name: str
    title: str
    key: str | None                        # None: on or off (one setting)
    fixed: dict
    values: tuple = ()
    integer: bool = False
    geometric: bool = True                 # refine between two values at their geometric mean
    dp_mode: str | None = None             # the DP mode it trains with (its guarantee's coverage, per threat model)

    def label(self, value, clip: float | None = None) -> str:
        clip_text = f", clip {clip:g}" if clip is not None else ""
        if self.key is None:
            return self.title
        return f"{self.title} {self.key.split('.')[-1]}={value:g}{clip_text}"


DEFENCES = {
    "central_dp": Defence("central_dp", "central DP", "dp.noise_multiplier", {"dp.mode": "server"},
                          (0.3, 1.0, 3.0), dp_mode="server"),
    "local_dp": Defence("local_dp", "local DP", "dp.noise_multiplier", {"dp.mode": "local"},
                        (0.03, 0.3, 3.0), dp_mode="local"),
    "secure_aggregation": Defence("secure_aggregation", "secure aggregation", None,
                                  {"federation.secure_aggregation": True, "dp.mode": "none", "audit.canaries": 0}),
    "local_epochs": Defence("local_epochs", "fewer local epochs", "federation.local_epochs", {}, (), integer=True,
                            geometric=False),
    "clients_per_round": Defence("clients_per_round", "more clients per round", "federation.fraction", {}, (),
                                 geometric=False),
    "early_stopping": Defence("early_stopping", "early stopping", "federation.rounds", {}, (), integer=True,
                              geometric=False),
}


def _default_values(defence: Defence, base: Scenario) -> tuple:
    """Grids that depend on the base scenario (weakest first)."""
    f = base.federation
    if defence.name == "local_epochs":
        return tuple(sorted({max(1, f.local_epochs // 3), max(1, f.local_epochs // 10), 1}, reverse=True))
    if defence.name == "early_stopping":
        return tuple(sorted({max(1, f.rounds // 2), 1}, reverse=True))
    if defence.name == "clients_per_round":
        return tuple(v for v in (0.5, 1.0) if v > f.fraction)
    return defence.values


# ----------------------------------------------------------------------------------------------------
# The frontier file
# ----------------------------------------------------------------------------------------------------


@dataclass
class FrontierSpec:
    name: str
    path: Path
    base: Path
    scenario: Scenario
    target: Target
    defences: list = field(default_factory=lambda: ["local_dp", "central_dp"])
    grid: dict = field(default_factory=dict)      # defence -> values, weakest first
    repeats: int = 1
    refine: int = 1
    clipping_norms: list = field(default_factory=list)
    mode: str = "sequential"
    cpus_per_run: int = 2
    overrides: dict = field(default_factory=dict)
    title: str = ""


def _positive_int(path, key, value, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{path}: frontier.{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _numbers(path, key, values, integer=False) -> list:
    kind = int if integer else (int, float)
    if not isinstance(values, list) or not values or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                             and v > 0 for v in values):
        raise ConfigError(f"{path}: frontier.{key}: expected a non-empty list of positive "
                          f"{'integers' if integer else 'numbers'}, got {values!r}")
    return list(values)


def load_frontier(path, *, target: str | None = None, overrides: dict | None = None, repeats: int | None = None,
                  mode: str | None = None) -> FrontierSpec:
    """A scenario file (the defaults apply) or a file with a ``[frontier]`` table; command-line values win."""
    from fedaudit.suite import MODES, _flatten, _resolve_key

    path = Path(path)
    raw = read_toml(path)
    table = raw.get("frontier")
    if table is None:
        table, base = {}, path
    else:
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: frontier: expected a table ([frontier])")
        unknown = sorted(set(table) - set(FRONTIER_KEYS))
        if unknown:
            raise ConfigError(f"{path}: frontier.{unknown[0]}: unknown key; allowed in [frontier]: "
                              f"{', '.join(FRONTIER_KEYS)}")
        if not isinstance(table.get("base"), str):
            raise ConfigError(f"{path}: frontier.base: required: the scenario file, relative to this file")
        base = (path.parent / table["base"]).resolve()
        if not base.is_file():
            raise ConfigError(f"{path}: frontier.base: no such scenario file {base}")
    sets = table.get("set", {})
    if not isinstance(sets, dict):
        raise ConfigError(f"{path}: frontier.set: expected a table of overrides")
    common = {_resolve_key(path, "frontier.set", k): v for k, v in _flatten(sets).items()}
    common.update({k: v for k, v in (overrides or {}).items() if v is not None})
    common.setdefault("audit.enabled", True)
    scenario = load_scenario(base, common)
    if not scenario.audit.enabled:
        raise ConfigError(f"{path}: audit.enabled = false: a frontier measures risk, so its runs need the audit on")
    defences = table.get("defences", ["local_dp", "central_dp"])
    if not isinstance(defences, list) or not defences or any(d not in DEFENCES for d in defences):
        raise ConfigError(f"{path}: frontier.defences: got {defences!r}; allowed: a list of {', '.join(DEFENCES)}")
    grid = table.get("grid", {})
    if not isinstance(grid, dict) or any(k not in DEFENCES or DEFENCES[k].key is None for k in grid):
        raise ConfigError(f"{path}: frontier.grid: a table of defence = [values]; defences with a strength: "
                          f"{', '.join(k for k, d in DEFENCES.items() if d.key is not None)}")
    grid = {k: _numbers(path, f"grid.{k}", v, DEFENCES[k].integer) for k, v in grid.items()}
    mode = mode or table.get("mode", "sequential")
    if mode not in MODES:
        raise ConfigError(f"{path}: frontier.mode: got {mode!r}; allowed: {', '.join(MODES)}")
    spec = FrontierSpec(
        name=str(table.get("name", f"frontier-{scenario.name}")), path=path.resolve(), base=Path(base).resolve(),
        scenario=scenario, target=parse_target(target or table.get("target", DEFAULT_TARGET),
                                               scenario.audit.threat_models),
        defences=list(defences), grid=grid,
        repeats=_positive_int(path, "repeats", repeats if repeats is not None else table.get("repeats", 1)),
        refine=_positive_int(path, "refine", table.get("refine", 1), minimum=0),
        clipping_norms=_numbers(path, "clipping_norms", table.get("clipping_norms", [scenario.dp.clipping_norm])),
        mode=mode, cpus_per_run=_positive_int(path, "cpus_per_run", table.get("cpus_per_run", 2)),
        overrides=common, title=str(table.get("title", "")))
    if spec.target.threat_model is None and spec.target.metric == "accountant_epsilon" and not any(
            DEFENCES[d].dp_mode for d in spec.defences):
        raise ConfigError(f"{path}: target {spec.target.text!r}: only DP defences have an accountant epsilon; "
                          f"add central_dp or local_dp to frontier.defences")
    return spec


# ----------------------------------------------------------------------------------------------------
# Configurations and their figures
# ----------------------------------------------------------------------------------------------------


@dataclass
class Config:
    """One defence at one strength (or no defence), run ``repeats`` times."""

    defence: str                 # "none" for the baseline
    value: float | None
    clip: float | None
    label: str
    overrides: dict
    stage: str                   # baseline, coarse, strongest (uncovered), refine (bisection), extend (beyond the grid)


def _covers(defence: Defence, target: Target) -> bool:
    """Whether the defence's DP guarantee covers the target's adversary (True where there is no guarantee to cover:
    the measure's effect is what the runs show)."""
    from fedaudit.threat_model import get_threat_model

    if defence.dp_mode is None or target.threat_model is None:
        return True
    return bool(get_threat_model(target.threat_model).dp_covers.get(defence.dp_mode, False))


def _config(defence: Defence, value, clip) -> Config:
    ov = dict(defence.fixed)
    if defence.key is not None:
        ov[defence.key] = int(value) if defence.integer else float(value)
    if defence.dp_mode is not None:
        ov["dp.clipping_norm"] = float(clip)
    return Config(defence.name, value, clip if defence.dp_mode else None,
                  defence.label(value, clip if defence.dp_mode else None), ov, "coarse")


def coarse_configs(spec: FrontierSpec) -> list[Config]:
    """The baseline, then every defence's coarse grid (its strongest setting only where its guarantee does not cover
    the target's adversary)."""
    out = [Config("none", None, None, "no defence", {}, "baseline")]
    for name in spec.defences:
        d = DEFENCES[name]
        values = spec.grid.get(name) or _default_values(d, spec.scenario)
        if d.key is not None and not values:
            log.warning("frontier: %s: no setting stronger than the scenario's own; skipped", d.title)
            continue
        clips = spec.clipping_norms if d.dp_mode else [None]
        for clip in clips:
            if d.key is None:
                out.append(_config(d, None, clip))
                continue
            chosen = list(values) if _covers(d, spec.target) else [values[-1]]
            for v in chosen:
                c = _config(d, v, clip)
                c.stage = "coarse" if len(chosen) > 1 or len(values) == 1 else "strongest"
                out.append(c)
    return out


def _midpoint(defence: Defence, a, b):
    if defence.integer:
        mid = int(round((a + b) / 2))
        return None if mid in (a, b) else mid
    mid = math.sqrt(a * b) if defence.geometric and a > 0 and b > 0 else (a + b) / 2
    return float(f"{mid:.3g}")


def refine_configs(spec: FrontierSpec, configs: list[Config], points: dict) -> list[Config]:
    """One step per defence (and clipping norm): where its settings cross the target, a setting between the strongest
    that misses it and the weakest that meets it (bisection); where none meets it, one setting beyond the strongest
    (a decade's half step for noise). ``points``: label -> figures."""
    out = []
    for name in spec.defences:
        d = DEFENCES[name]
        if d.key is None:
            continue
        for clip in (spec.clipping_norms if d.dp_mode else [None]):
            line = [c for c in configs if c.defence == name and c.clip == clip and c.label in points]
            order = sorted(line, key=lambda c: c.value, reverse=_descending(d))     # weakest first
            met = [points[c.label]["meets"] for c in order]
            nxt = None
            for i in range(1, len(order)):
                if met[i] and not met[i - 1]:
                    nxt = _midpoint(d, order[i - 1].value, order[i].value)
                    break
            else:
                if order and not any(met) and _covers(d, spec.target):
                    nxt = _stronger(d, order[-1].value)       # nothing meets it yet: one step beyond the grid
            if nxt is not None and all(c.value != nxt for c in line):
                c = _config(d, nxt, clip)
                c.stage = "refine" if any(met) else "extend"
                out.append(c)
    return out


def _stronger(defence: Defence, value):
    """The next setting beyond the strongest tried (None: there is none)."""
    if defence.name == "clients_per_round":
        return None if value >= 1.0 else min(1.0, 2 * value)
    if _descending(defence):
        return None if value <= 1 else max(1, value // 2)
    return float(f"{value * math.sqrt(10):.3g}")


def _descending(defence: Defence) -> bool:
    """Whether a smaller value is the stronger setting (fewer epochs, fewer rounds)."""
    return defence.name in ("local_epochs", "early_stopping")


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    from scipy.stats import t

    if values.size < 2:
        return math.nan, math.nan
    half = float(t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return float(values.mean() - half), float(values.mean() + half)


def _stat(values: list, single_ci=None) -> dict:
    """Mean, 95% interval (t over the seeds; one seed: the run's own interval when given) and the values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not v.size:
        return {"mean": None, "ci": None, "values": []}
    lo, hi = _t_interval(v)
    if v.size == 1 and single_ci is not None:
        lo, hi = single_ci
    ci = [lo, hi] if math.isfinite(lo) and math.isfinite(hi) else None
    return {"mean": float(v.mean()), "ci": ci, "values": [float(x) for x in v]}


def run_figures(run_dir: Path) -> dict:
    """One run's figures from its files: final accuracy, each threat model's headline metrics with intervals (the
    TPR at 1% FPR as the run's report states it: that of the attack chosen for that rate where the run chose one),
    the accountant's and the measured epsilons."""
    from fedaudit.privacy import ensure_dp
    from fedaudit.risk import empirical_epsilon, num
    from fedaudit.schema import read_rounds, read_summary

    lines = read_rounds(run_dir / "rounds.jsonl")
    acc = [line.model_accuracy for line in lines if line.model_accuracy is not None]
    summary = read_summary(run_dir / "summary.json")
    out = {"accuracy": float(acc[-1]) if acc else None, "threat_models": {}, "accountant_epsilon": None}
    if summary is None:
        return out
    for tm, view in summary.threat_models.items():
        metrics = view.metrics if isinstance(view.metrics, dict) else {}
        low, _ = empirical_epsilon(metrics)
        entry = {k: num(metrics.get(k)) for k in HEADLINE_KEYS}
        entry["epsilon_lower"] = low
        entry["intervals"] = {k: metrics.get(f"{k}_ci") for k in HEADLINE_KEYS if metrics.get(f"{k}_ci")}
        at_1pct = view.low_fpr if view.low_fpr_attack and isinstance(view.low_fpr, dict) else None
        if at_1pct is not None:    # the rate the run's report states: the attack chosen for it, on the unknown records
            entry["tpr_at_1pct"] = num(at_1pct.get("tpr_at_1pct"))
            entry["intervals"].pop("tpr_at_1pct", None)
            if at_1pct.get("tpr_at_1pct_ci"):
                entry["intervals"]["tpr_at_1pct"] = at_1pct["tpr_at_1pct_ci"]
            entry["tpr_at_1pct_attack"] = view.low_fpr_attack
        p = summary.privacy_of(tm)
        if p is not None:
            entry["accountant_epsilon"] = p.accountant_epsilon
            entry["canary_epsilon"] = p.canary_epsilon
        out["threat_models"][tm] = entry
    dp = ensure_dp(run_dir, _run_scenario(run_dir), summary, write=False)    # computed where the run did not
    if isinstance(dp, dict) and dp.get("accountant_epsilon") is not None:
        out["accountant_epsilon"] = num(dp["accountant_epsilon"])
    return out


def _run_scenario(run_dir: Path) -> Scenario | None:
    try:
        return load_scenario(run_dir / "scenario.toml", run_dir_file=True)
    except Exception:  # noqa: BLE001 - a run without a readable scenario has no accountant epsilon to compute
        return None


def _value(target_metric: str, tm: str | None, fig: dict) -> float:
    if tm is not None:
        return float(fig["threat_models"].get(tm, {}).get(target_metric, math.nan))
    if target_metric == "accountant_epsilon":
        v = fig.get("accountant_epsilon")
        return math.inf if v is None else float(v)
    values = [e.get("epsilon_lower", math.nan) for e in fig["threat_models"].values()]
    values = [v for v in values if math.isfinite(v)]
    return max(values) if values else math.nan


def config_point(spec: FrontierSpec, config: Config, figures: list[dict]) -> dict:
    """A configuration's figures over its repeats, and whether it meets the target (on the mean over the seeds)."""
    t = spec.target
    tms = sorted({tm for f in figures for tm in f["threat_models"]})
    single = lambda key, tm: (figures[0]["threat_models"].get(tm, {}).get("intervals", {}).get(key)  # noqa: E731
                              if len(figures) == 1 else None)
    risk = {tm: {k: _stat([f["threat_models"].get(tm, {}).get(k) for f in figures], single(k, tm))
                 for k in TM_METRICS} for tm in tms}
    for tm in tms:
        acc_eps = [f["threat_models"].get(tm, {}).get("accountant_epsilon") for f in figures]
        risk[tm]["accountant_epsilon"] = next((e for e in acc_eps if e is not None), None)
    target_values = [_value(t.metric, t.threat_model, f) for f in figures]
    stat = _stat(target_values)
    measured = stat["mean"] if stat["mean"] is not None else (math.inf if target_values and all(
        math.isinf(v) for v in target_values) else math.nan)
    accountant = [f.get("accountant_epsilon") for f in figures]
    return {"label": config.label, "defence": config.defence, "value": config.value, "clipping_norm": config.clip,
            "stage": config.stage, "overrides": config.overrides, "runs": len(figures),
            "accuracy": _stat([f["accuracy"] for f in figures]), "risk": risk,
            "accountant_epsilon": next((a for a in accountant if a is not None), None),
            "target_value": measured, "target_values": target_values, "meets": t.met(measured),
            "meets_every_seed": bool(target_values) and all(t.met(v) for v in target_values)}


def pareto_front(points: list[dict]) -> list[str]:
    """Labels of the configurations no other beats on both the target's metric (lower) and accuracy (higher)."""
    ok = [p for p in points if p["accuracy"]["mean"] is not None and math.isfinite(p["target_value"])]
    front = []
    for p in ok:
        r, a = p["target_value"], p["accuracy"]["mean"]
        dominated = any(q is not p and q["target_value"] <= r and q["accuracy"]["mean"] >= a
                        and (q["target_value"] < r or q["accuracy"]["mean"] > a) for q in ok)
        if not dominated:
            front.append(p["label"])
    return sorted(front, key=lambda lab: next(p["target_value"] for p in ok if p["label"] == lab))


def cheapest(points: list[dict]) -> dict | None:
    """The configuration that meets the target with the highest mean accuracy (None: none meets it)."""
    meeting = [p for p in points if p["meets"] and p["accuracy"]["mean"] is not None]
    return max(meeting, key=lambda p: (p["accuracy"]["mean"], p["meets_every_seed"])) if meeting else None


# ----------------------------------------------------------------------------------------------------
# Running the search
# ----------------------------------------------------------------------------------------------------


def _cases(spec: FrontierSpec, configs: list[Config]):
    """Suite cases: each configuration at each seed, numbered in the order they were added."""
    from fedaudit.suite import SuiteCase, _slug

    cases = []
    seed0 = spec.scenario.federation.seed
    for c in configs:
        for r in range(spec.repeats):
            seed = seed0 + r
            ov = {**c.overrides, "federation.seed": seed}
            scenario = spec.scenario.with_overrides(ov)
            scenario.name = _slug(f"{spec.scenario.name}-{c.label}-seed{seed}")[:120]
            i = len(cases) + 1
            cases.append(SuiteCase(i, f"{c.label}, seed {seed}", _slug(f"{c.label}-seed{seed}")[:100],
                                   {**spec.overrides, **ov}, scenario))
    return cases


def _suite(spec: FrontierSpec, configs: list[Config]):
    from fedaudit.suite import Suite

    suite = Suite(name=spec.name, path=spec.path, base=spec.base, title=spec.title or f"Frontier: {spec.target.text}",
                  mode=spec.mode, cpus_per_run=spec.cpus_per_run)
    suite.cases = _cases(spec, configs)
    return suite


def evaluate(spec: FrontierSpec, configs: list[Config], out: Path, status: dict) -> list[dict]:
    """Each configuration's point from the runs that finished."""
    points = []
    for c in configs:
        dirs = [out / case.dirname for case in _cases(spec, [c])]
        done = [d for d in dirs if status.get(d.name, {}).get("status") in ("done", "reused")]
        if not done:
            continue
        p = config_point(spec, c, [run_figures(d) for d in done])
        p["dirs"] = [d.name for d in done]
        p["nodes"] = sorted({status[d.name]["node"] for d in done if status[d.name].get("node")})
        points.append(p)
    return points


def frontier_result(spec: FrontierSpec, points: list[dict]) -> dict:
    from fedaudit.dp import ACCOUNTANT

    best = cheapest(points)
    base = next((p for p in points if p["defence"] == "none"), None)
    uncovered = [DEFENCES[d].title for d in spec.defences if not _covers(DEFENCES[d], spec.target)]
    return {"name": spec.name, "scenario": spec.scenario.name, "source": str(spec.path),
            "target": {"text": spec.target.text, "threat_model": spec.target.threat_model,
                       "metric": spec.target.metric, "op": spec.target.op, "value": spec.target.value},
            "defences": spec.defences, "repeats": spec.repeats, "refine": spec.refine, "mode": spec.mode,
            "accountant": ACCOUNTANT, "uncovered": uncovered,
            "baseline": base["label"] if base else None, "cheapest": best["label"] if best else None,
            "pareto": pareto_front(points), "points": points}


def run_frontier(path, out=None, *, target: str | None = None, overrides: dict | None = None,
                 repeats: int | None = None, mode: str | None = None, progress: bool = True) -> Path:
    """Search the frontier of the file at ``path`` into ``out``; write frontier.json and frontier.html."""
    import json

    from fedaudit.report.frontier import build_frontier_report
    from fedaudit.rundir import atomic_write_text, json_safe
    from fedaudit.suite import _prepare_out, _say, execute_cases

    spec = load_frontier(path, target=target, overrides=overrides, repeats=repeats, mode=mode)
    configs = coarse_configs(spec)
    out = _prepare_out(_suite(spec, configs), out)
    status = execute_cases(_suite(spec, configs), out, progress)
    points = evaluate(spec, configs, out, status)
    for step in range(spec.refine):
        more = refine_configs(spec, configs, {p["label"]: p for p in points})
        if not more:
            break
        _say(progress, f"frontier {spec.name}: refining ({step + 1}/{spec.refine}): "
                       + "; ".join(c.label for c in more))
        configs += more
        status = execute_cases(_suite(spec, configs), out, progress)
        points = evaluate(spec, configs, out, status)
    result = frontier_result(spec, points)
    result["failed"] = [{"dir": d, **s} for d, s in status.items() if s.get("status") not in ("done", "reused")]
    atomic_write_text(out / "frontier.json", json.dumps(json_safe(result), indent=2) + "\n")
    build_frontier_report(out, result)
    return out


__all__ = ["DEFENCES", "Defence", "FrontierSpec", "Target", "cheapest", "coarse_configs", "config_point",
           "load_frontier", "pareto_front", "parse_target", "refine_configs", "run_figures", "run_frontier"]
