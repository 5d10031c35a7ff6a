"""Scenario suites: a base scenario and a grid of overrides, run one after another (or side by side as Ray
tasks on a cluster), then compared in one ``comparison.html``.

A suite is a TOML file with a ``[suite]`` table::

    [suite]
    name = "partition"                 # default: the file's stem
    title = "IID vs non-IID clients"   # heading of comparison.html
    description = "What the comparison shows, in a sentence or two."
    base = "quickstart.toml"           # the base scenario, relative to this file
    mode = "sequential"                # or "ray": each combination as a Ray task (see below)
    cpus_per_run = 2                   # "ray" mode: CPUs each combination reserves on the cluster

    [set]                              # overrides for every combination
    "federation.rounds" = 3

    [grid]                             # every combination of these values
    partition = ["iid", "dirichlet:0.1"]
    clients = [10, 50]

    [[variants]]                       # and/or an explicit list (each combined with every grid point)
    label = "no DP"
    "dp.mode" = "none"

Keys are dotted scenario paths (``"federation.local_epochs"``, quoted so TOML keeps the dot) or short
names (``partition``, ``clients``, ``local_epochs``, ``rounds``, ``noise_multiplier``, ...: see ``SHORT_KEYS``).
Overrides apply in this order: base scenario, ``[set]``, the command line (``--set``, ``--rounds`` ...),
then the combination's own values. Every combination is checked before anything runs.

Each combination runs into ``OUT/NN-<label>/`` (a normal run directory with its own report), then
``OUT/comparison.html`` compares them all; ``OUT/suite.json`` records what ran. Running the same suite into
the same folder again reuses finished combinations, resumes the ones that were interrupted or killed (in
sequential mode: from their last complete round, as ``fedaudit run --resume`` does) and reruns the others.
SIGINT / SIGTERM stop the combination that is running as they stop ``fedaudit run``; suite.json marks it
``interrupted`` and the command exits with 130 / 143.

``mode = "ray"``: the driver joins the cluster at ``ray.address`` (or starts a local Ray) and submits one
task per combination reserving ``cpus_per_run`` CPUs; each task runs the combination in a fresh process
with a private local Ray of that many CPUs on the node where it landed, and returns the run directory's
files, which the driver unpacks into ``OUT``. No shared filesystem is needed.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedaudit.config import Scenario, load_scenario, read_toml
from fedaudit.errors import ConfigError, FedAuditError
from fedaudit.rundir import atomic_write_text, json_safe, new_run_dir
from fedaudit.schema import read_rounds

log = logging.getLogger(__name__)

SHORT_KEYS = {
    "partition": "federation.partition",
    "clients": "federation.clients",
    "rounds": "federation.rounds",
    "local_epochs": "federation.local_epochs",
    "fraction": "federation.fraction",
    "batch_size": "federation.batch_size",
    "learning_rate": "federation.learning_rate",
    "optimizer": "federation.optimizer",
    "strategy": "federation.strategy",
    "seed": "federation.seed",
    "dp": "dp.mode",
    "noise_multiplier": "dp.noise_multiplier",
    "clipping_norm": "dp.clipping_norm",
    "delta": "dp.delta",
    "dataset": "data.dataset",
    "model": "model.name",
    "attacks": "audit.attacks",
    "threat_models": "audit.threat_models",
}
SUITE_KEYS = ("name", "title", "description", "base", "mode", "cpus_per_run")
TOP_KEYS = ("suite", "set", "grid", "variants")
MODES = ("sequential", "ray")
LABEL_KEYS = ("label", "name")


@dataclass
class SuiteCase:
    """One combination: its label, directory name, overrides and the resolved scenario."""

    index: int
    label: str
    dirname: str
    overrides: dict
    scenario: Scenario


@dataclass
class Suite:
    name: str
    path: Path
    base: Path
    title: str = ""
    description: str = ""
    mode: str = "sequential"
    cpus_per_run: int = 2
    cases: list = field(default_factory=list)


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", text.replace("=", "-")).strip("-.")
    return re.sub(r"-{2,}", "-", s) or "run"


def _flatten(table: dict, prefix: str = "") -> dict:
    """Nested TOML tables to dotted keys (``{"dp": {"mode": "x"}}`` -> ``{"dp.mode": "x"}``)."""
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix.startswith(("model.options", "data.options")):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _resolve_key(path: Path, where: str, key: str) -> str:
    if "." in key:
        return key
    if key in SHORT_KEYS:
        return SHORT_KEYS[key]
    raise ConfigError(f"{path}: {where}.{key}: unknown short name; use a dotted scenario key (e.g. \"federation.partition\") "
                      f"or one of: {', '.join(SHORT_KEYS)}")


def _value_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value_text(x) for x in v) + "]"
    return str(v)


def load_suite(path, overrides: dict | None = None) -> Suite:
    """Read and check a suite file; every combination's scenario is resolved and validated here."""
    path = Path(path)
    raw = read_toml(path)
    if "suite" not in raw or not isinstance(raw["suite"], dict):
        raise ConfigError(f"{path}: not a suite: it needs a [suite] table (with base = \"scenario.toml\")")
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"{path}: {key}: unknown key; allowed at the top of a suite: {', '.join(TOP_KEYS)}")
    meta = raw["suite"]
    for key in meta:
        if key not in SUITE_KEYS:
            raise ConfigError(f"{path}: suite.{key}: unknown key; allowed in [suite]: {', '.join(SUITE_KEYS)}")
    name = meta.get("name", path.stem)
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]+$", name):
        raise ConfigError(f"{path}: suite.name: got {name!r}; allowed: letters, digits, '.', '_' and '-'")
    if "base" not in meta or not isinstance(meta["base"], str):
        raise ConfigError(f"{path}: suite.base: required: the base scenario file, relative to the suite "
                          f"(e.g. base = \"quickstart.toml\")")
    base = (path.parent / meta["base"]).resolve()
    if not base.is_file():
        raise ConfigError(f"{path}: suite.base: no such scenario file {base}")
    mode = meta.get("mode", "sequential")
    if mode not in MODES:
        raise ConfigError(f"{path}: suite.mode: got {mode!r}; allowed: {', '.join(MODES)}")
    cpus = meta.get("cpus_per_run", 2)
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise ConfigError(f"{path}: suite.cpus_per_run: must be a positive integer, got {cpus!r}")
    for key in ("title", "description"):
        if key in meta and not isinstance(meta[key], str):
            raise ConfigError(f"{path}: suite.{key}: expected a string, got {meta[key]!r}")

    common = {}
    if "set" in raw:
        if not isinstance(raw["set"], dict):
            raise ConfigError(f"{path}: set: expected a table of overrides")
        common = {_resolve_key(path, "set", k): v for k, v in _flatten(raw["set"]).items()}

    grid_axes: list[tuple[str, str, list]] = []   # (name as written, dotted key, values)
    if "grid" in raw:
        if not isinstance(raw["grid"], dict):
            raise ConfigError(f"{path}: grid: expected a table of lists, e.g. partition = [\"iid\", \"dirichlet:0.1\"]")
        for written, values in _flatten(raw["grid"]).items():
            dotted = _resolve_key(path, "grid", written)
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{path}: grid.{written}: expected a non-empty list of values, got {values!r}")
            short = written if "." not in written else dotted.split(".")[-1]
            grid_axes.append((short, dotted, values))

    variants: list[tuple[str | None, dict]] = []
    if "variants" in raw:
        if not isinstance(raw["variants"], list) or not all(isinstance(v, dict) for v in raw["variants"]):
            raise ConfigError(f"{path}: variants: expected an array of tables ([[variants]])")
        for i, v in enumerate(raw["variants"]):
            v = dict(v)
            label = None
            for lk in LABEL_KEYS:
                if lk in v:
                    label = v.pop(lk)
                    if not isinstance(label, str):
                        raise ConfigError(f"{path}: variants[{i}].{lk}: expected a string, got {label!r}")
            ov = {_resolve_key(path, f"variants[{i}]", k): val for k, val in _flatten(v).items()}
            if not ov and label is None:
                raise ConfigError(f"{path}: variants[{i}]: empty; give it overrides such as \"dp.mode\" = \"server\"")
            variants.append((label, ov))
    if not grid_axes and not variants:
        raise ConfigError(f"{path}: a suite needs a [grid] table or [[variants]] to compare")

    base_scenario = load_scenario(base)
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    suite = Suite(name=name, path=path.resolve(), base=base, title=meta.get("title", ""),
                  description=meta.get("description", ""), mode=mode, cpus_per_run=cpus)
    grid_points = list(itertools.product(*[[(short, dotted, v) for v in values] for short, dotted, values in grid_axes]))
    combos = []
    for variant in (variants or [(None, {})]):
        for point in grid_points:
            label_parts = [variant[0]] if variant[0] else (
                [f"{k.split('.')[-1]}={_value_text(v)}" for k, v in variant[1].items()] if variant[1] else [])
            label_parts += [f"{short}={_value_text(v)}" for short, _, v in point]
            ov = dict(variant[1])
            ov.update({dotted: v for _, dotted, v in point})
            combos.append((", ".join(label_parts) or "base", ov))
    seen = set()
    for i, (label, ov) in enumerate(combos, start=1):
        merged = {**common, **cli, **ov}
        try:
            scenario = base_scenario.with_overrides(merged)
        except ConfigError as exc:
            raise ConfigError(f"{path}: combination {i} ({label}): {exc}") from None
        slug = _slug(label)
        scenario.name = _slug(f"{base_scenario.name}-{slug}")[:120]
        dirname = f"{i:02d}-{slug}"[:100]
        if dirname in seen:
            dirname = f"{dirname}-{i}"
        seen.add(dirname)
        suite.cases.append(SuiteCase(i, label, dirname, merged, scenario))
    return suite


# ----------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------


def _complete(run_dir: Path, scenario: Scenario) -> bool:
    """A finished run: every round recorded, and the audit's summary when the audit is on."""
    if not (run_dir / "scenario.toml").is_file():
        return False
    rounds = {line.round for line in read_rounds(run_dir / "rounds.jsonl")}
    if not set(range(1, scenario.federation.rounds + 1)) <= rounds:
        return False
    if scenario.audit.enabled and not (run_dir / "summary.json").is_file():
        return False
    return True


def _prepare_out(suite: Suite, out) -> Path:
    if out is None:
        return new_run_dir("runs", suite.name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        meta = out / "suite.json"
        try:
            same = json.loads(meta.read_text(encoding="utf-8")).get("name") == suite.name
        except (OSError, json.JSONDecodeError, AttributeError):
            same = False
        if not same:
            raise ConfigError(f"--out {out}: already exists and holds something other than this suite's runs; "
                              f"name a new or empty folder (or the folder of an earlier run of suite {suite.name!r})")
    return out


def _write_meta(suite: Suite, out: Path, status: dict) -> None:
    meta = {
        "name": suite.name, "title": suite.title, "description": suite.description, "source": str(suite.path),
        "base": str(suite.base), "mode": suite.mode,
        "cases": [{"index": c.index, "label": c.label, "dir": c.dirname, "scenario": c.scenario.name,
                   "overrides": c.overrides, **status.get(c.dirname, {"status": "pending"})} for c in suite.cases],
    }
    atomic_write_text(out / "suite.json", json.dumps(json_safe(meta), indent=2) + "\n")


def _say(progress: bool, text: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(text, markup=False, highlight=False)
    log.info(text)


def _resumable(d: Path, scenario: Scenario) -> bool:
    """An interrupted or killed run of this very scenario, which ``--resume`` can continue."""
    from fedaudit.run import check_resumable

    try:
        return check_resumable(d).to_dict() == scenario.to_dict()
    except FedAuditError:
        return False


def _run_sequential(suite: Suite, out: Path, todo: list, status: dict, progress: bool) -> None:
    from fedaudit.run import resume_run, run_scenario

    for case in todo:
        d = out / case.dirname
        resume = d.exists()
        _say(progress, f"[{case.index}/{len(suite.cases)}] {case.label}: "
                       f"{'resuming' if resume else 'running into'} {d}")
        t0 = time.time()
        try:
            if resume:
                resume_run(d, progress=progress)
            else:
                run_scenario(case.scenario, out=d, progress=progress)
            status[case.dirname] = {"status": "done", "seconds": round(time.time() - t0, 1)}
        except KeyboardInterrupt as exc:
            status[case.dirname] = {"status": "interrupted"}
            _write_meta(suite, out, status)
            if hasattr(exc, "detail"):
                exc.detail = (f" (suite {suite.name}, combination {case.index}: {case.label}){exc.detail}; or run the "
                              f"suite again into {out} (with the same options) to resume it")
            raise
        except Exception as exc:  # noqa: BLE001 - one failed combination must not lose the others
            log.error("suite %s: %s failed: %s", suite.name, case.label, exc, exc_info=not isinstance(exc, FedAuditError))
            status[case.dirname] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                    "seconds": round(time.time() - t0, 1)}
        _write_meta(suite, out, status)


def _remote_case(scenario_toml: str, dirname: str, cpus: int) -> tuple[str, bytes]:
    """Runs inside a Ray task: the combination in a fresh process with a private local Ray; returns the id of the
    node it ran on and the run directory as a tar.gz.

    A federation run owns its Ray session from start to end (Flower's backend shuts Ray down when it ends), so it
    cannot run inside the task's own worker, which belongs to the cluster's session: the subprocess starts a Ray of
    its own on this node, with ``cpus`` CPUs (what the task reserved), in its own temp dir."""
    import subprocess
    import tempfile

    import ray

    node = ray.get_runtime_context().get_node_id()

    with tempfile.TemporaryDirectory(prefix="fa-") as tmp:
        tmp = Path(tmp)
        scenario_path = tmp / "scenario.toml"
        scenario_path.write_text(scenario_toml, encoding="utf-8")
        run_dir = tmp / dirname
        ray_tmp = tmp / "r"   # a private Ray temp dir: the cluster's own session on this node is never joined
        ray_tmp.mkdir()
        # The task's own Ray settings (address, job, node) must not leak into the nested session.
        keep = ("RAY_USAGE_STATS_ENABLED", "RAY_DEDUP_LOGS")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k in keep}
        env["RAY_TMPDIR"] = str(ray_tmp)
        cmd = [sys.executable, "-m", "fedaudit.cli", "run", str(scenario_path), "--out", str(run_dir), "-q",
               "--set", f"ray.num_cpus={int(cpus)}", "--set", 'ray.address=""']
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"fedaudit run failed (exit {proc.returncode}): {tail}")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(run_dir, arcname=dirname)
        return node, buf.getvalue()


def _unpack(data: bytes, out: Path, dirname: str) -> None:
    target = out / dirname
    staging = out / f".{dirname}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(staging, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging / dirname, target)
    shutil.rmtree(staging, ignore_errors=True)


def _run_ray(suite: Suite, out: Path, todo: list, status: dict, progress: bool) -> None:
    import ray

    from fedaudit.federation.runtime import init_ray

    address = todo[0].scenario.ray.address if todo else ""
    started = not ray.is_initialized()
    resources = init_ray(address)
    from fedaudit.interrupt import reinstall

    reinstall()                 # ray.init replaced the SIGTERM handler with its own
    total = resources.get("CPU", 0)
    cpus = suite.cpus_per_run
    if total and cpus > total:
        raise ConfigError(f"suite.cpus_per_run: {cpus} CPUs per combination, but the cluster has only {total:g}")
    task = ray.remote(num_cpus=cpus, max_retries=0)(_remote_case)
    pending = {}
    t0 = {}
    for case in todo:
        toml = case.scenario.with_overrides({"ray.address": ""}).to_toml()
        ref = task.remote(toml, case.dirname, cpus)
        pending[ref] = case
        t0[case.dirname] = time.time()
        status[case.dirname] = {"status": "submitted"}
    _write_meta(suite, out, status)
    _say(progress, f"suite {suite.name}: {len(todo)} combinations submitted as Ray tasks ({cpus} CPUs each, "
                   f"{total:g} CPUs in the cluster)")
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                case = pending.pop(ref)
                seconds = round(time.time() - t0[case.dirname], 1)
                try:
                    node, data = ray.get(ref)
                    _unpack(data, out, case.dirname)
                    status[case.dirname] = {"status": "done", "seconds": seconds, "node": node}
                    _say(progress, f"[{case.index}/{len(suite.cases)}] {case.label}: done in {seconds:.0f} s")
                except Exception as exc:  # noqa: BLE001
                    msg = str(exc).strip().splitlines()
                    status[case.dirname] = {"status": "failed", "seconds": seconds,
                                            "error": " ".join(msg[-6:])[:2000] if msg else type(exc).__name__}
                    _say(progress, f"[{case.index}/{len(suite.cases)}] {case.label}: FAILED")
                _write_meta(suite, out, status)
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def run_suite(path, out=None, overrides: dict | None = None, progress: bool = True) -> Path:
    """Run every combination of the suite at ``path`` and write ``comparison.html``; return the suite folder."""
    from fedaudit.report.compare import build_comparison

    suite = load_suite(path, overrides)
    out = _prepare_out(suite, out)
    status = execute_cases(suite, out, progress)
    done = [c for c in suite.cases if status.get(c.dirname, {}).get("status") in ("done", "reused")]
    failures = [{"label": c.label, "error": status.get(c.dirname, {}).get("error", "did not finish")}
                for c in suite.cases if c not in done]
    if not done:
        raise FedAuditError(f"suite {suite.name}: every combination failed; first error: "
                            f"{failures[0]['error'] if failures else 'none recorded'} (see {out / 'suite.json'})")
    build_comparison([out / c.dirname for c in done], out, labels=[c.label for c in done],
                     title=suite.title or f"Suite {suite.name}: comparison", description=suite.description,
                     failures=failures)
    if failures:
        log.warning("suite %s: %d of %d combinations failed (see comparison.html)", suite.name, len(failures),
                    len(suite.cases))
    return out


def execute_cases(suite: Suite, out: Path, progress: bool = True) -> dict:
    """Run the suite's combinations into ``out`` (sequentially, or as Ray tasks in ``ray`` mode), reusing finished
    ones, resuming (sequential) or rerunning (ray) the others; return each directory's status as suite.json has it.
    The frontier calls this once per stage of its search, with the cases of every stage so far."""
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_status(out)
    status: dict = {}
    todo = []
    for case in suite.cases:
        d = out / case.dirname
        if d.exists() and _complete(d, case.scenario):
            status[case.dirname] = {**previous.get(case.dirname, {}), "status": "reused"}
            if not (d / "report.html").is_file():
                from fedaudit.report import build_report

                build_report(d)
            continue
        if d.exists() and suite.mode == "sequential" and _resumable(d, case.scenario):
            log.warning("suite %s: %s stopped before it finished; resuming it", suite.name, d)
        elif d.exists():
            log.warning("suite %s: %s is incomplete from an earlier attempt; running it again", suite.name, d)
            shutil.rmtree(d)
        todo.append(case)
    _write_meta(suite, out, status)
    _say(progress, f"suite {suite.name}: {len(suite.cases)} combinations ({len(suite.cases) - len(todo)} already "
                   f"done), {suite.mode} mode, into {out}")
    if todo:
        (_run_ray if suite.mode == "ray" else _run_sequential)(suite, out, todo, status, progress)
    return status


def _previous_status(out: Path) -> dict:
    """suite.json's status per directory from an earlier attempt (where a reused run ran, how long it took)."""
    try:
        cases = json.loads((out / "suite.json").read_text(encoding="utf-8")).get("cases", [])
        return {c["dir"]: {k: v for k, v in c.items() if k in ("seconds", "node")} for c in cases
                if isinstance(c, dict) and isinstance(c.get("dir"), str)}
    except (OSError, json.JSONDecodeError, AttributeError, TypeError):
        return {}


__all__ = ["Suite", "SuiteCase", "execute_cases", "load_suite", "run_suite", "SHORT_KEYS"]
