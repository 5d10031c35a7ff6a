"""Run one scenario's federation on Ray and record every round in the run directory."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fedaudit.config import Scenario
from fedaudit.data import Dataset, Ledger, build_ledger, load_dataset, parse_partition
from fedaudit.errors import ConfigError, FedAuditError
from fedaudit.federation.runtime import init_ray, quiet_environment
from fedaudit.rundir import atomic_write_text, upsert_jsonl

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A scenario checked against its data and model, before anything is written."""

    scenario: Scenario
    dataset: Dataset
    ledger: Ledger
    initial_weights: list


def check_inputs(scenario: Scenario) -> tuple[Dataset, Ledger]:
    """Every check that needs no TensorFlow: the strategy and the model's name and options, then the data and
    its split. Runs before TensorFlow is imported, so bad input is reported before TensorFlow starts."""
    from fedaudit.config import GIVEN_PARTITION, STRATEGIES
    from fedaudit.models.registry import check_model

    f = scenario.federation
    if f.strategy not in STRATEGIES:
        raise ConfigError(f"federation.strategy: {f.strategy!r} is a Flower App's own strategy (recorded by "
                          f"fedaudit.flower); fedaudit run builds: {', '.join(STRATEGIES)}")
    if f.partition == GIVEN_PARTITION:
        raise ConfigError(f"federation.partition: {GIVEN_PARTITION!r} records a Flower App's own split (recorded by "
                          "fedaudit.flower); fedaudit run splits with: iid, dirichlet:ALPHA, shards:N")
    check_model(scenario.model.name, scenario.model.options)
    dataset = load_dataset(scenario.data.dataset, seed=f.seed, **scenario.data.options)
    method, param = parse_partition(f.partition)
    ledger = build_ledger(dataset.y, f.clients, partition=method, param=param,
                          population_fraction=scenario.data.population_fraction,
                          test_fraction=scenario.data.test_fraction, seed=f.seed)
    return dataset, ledger


def prepare(scenario: Scenario) -> Prepared:
    """Load the data, split it and build the model: every bad input fails here, before a run dir exists."""
    dataset, ledger = check_inputs(scenario)
    from fedaudit.models import build_model

    f = scenario.federation
    model = build_model(scenario.model.name, dataset.input_shape, dataset.num_classes, seed=f.seed,
                        **scenario.model.options)
    return Prepared(scenario, dataset, ledger, [np.asarray(w) for w in model.get_weights()])


def write_inputs(run_dir: Path, prepared: Prepared) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "scenario.toml", prepared.scenario.to_toml())
    prepared.ledger.save(run_dir / "ledger.npz")


class Evaluator:
    """Global accuracy and loss of a set of weights on the held-out test split (in the driver)."""

    def __init__(self, prepared: Prepared):
        from fedaudit.models import Trainer, build_model

        s, d = prepared.scenario, prepared.dataset
        model = build_model(s.model.name, d.input_shape, d.num_classes, seed=s.federation.seed, **s.model.options)
        self.trainer = Trainer(model, s.federation.optimizer, s.federation.learning_rate)
        test = prepared.ledger.test_indices()
        self.x, self.y = d.x[test], d.y[test]

    def __call__(self, weights) -> tuple[float, float]:
        self.trainer.set_weights(weights)
        return self.trainer.evaluate(self.x, self.y)


def round_record(update, accuracy: float, loss: float) -> dict:
    """The utility part of a round's line in rounds.jsonl."""
    losses = [update.train_loss[k] for k in sorted(update.train_loss)]
    weights = [update.examples[k] for k in sorted(update.train_loss)]
    return {
        "round": update.round,
        "train_loss": float(np.average(losses, weights=weights)) if losses else None,
        "accuracy": accuracy,
        "loss": loss,
        "clients": sorted(update.clients),
        "failed": [str(x) for x in update.failed],
        "non_finite_clients": sorted(k for k, w in update.clients.items()
                                     if not all(np.isfinite(a).all() for a in w)),
        "wall_seconds": round(time.time() - update.started, 3),
    }


class RoundLog:
    """Default round sink: appends each round's record to rounds.jsonl."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "rounds.jsonl"

    def __call__(self, update, record: dict) -> None:
        upsert_jsonl(self.path, record)

    def finish(self) -> None:
        pass


@dataclass
class FederationResult:
    run_dir: Path
    rounds: int
    accuracy: float
    loss: float
    seconds: float
    ray_seconds: float


def run_federation(prepared: Prepared, run_dir: Path, *, sink_factory: Callable | None = None,
                   progress: bool = True, fail_clients: dict | None = None) -> FederationResult:
    """Train the scenario's federation with Flower's simulation runtime on Ray.

    ``sink_factory(prepared, run_dir)`` returns the callable that receives each round (default: RoundLog);
    it is created after Ray is up, so it may start actors, and its ``finish()`` is awaited before the
    ServerApp returns.
    """
    quiet_environment()
    import ray
    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedaudit.federation.client import make_client_app
    from fedaudit.federation.strategy import AuditedStrategy, build_strategy
    from fedaudit.federation.task import TrainSpec

    logging.getLogger("flwr").setLevel(logging.WARNING)
    s = prepared.scenario
    f = s.federation
    sampled = max(1, int(f.clients * f.fraction))
    t0 = time.time()
    init_ray(s.ray.address, s.ray.num_cpus)
    ray_seconds = time.time() - t0
    d = prepared.dataset
    spec = TrainSpec(data_ref=ray.put((d.x, d.y)), owner=prepared.ledger.owner, model_name=s.model.name,
                     model_options=dict(s.model.options), input_shape=d.input_shape, num_classes=d.num_classes,
                     optimizer=f.optimizer, learning_rate=f.learning_rate, local_epochs=f.local_epochs,
                     batch_size=f.batch_size, seed=f.seed, client_threads=max(1, int(s.ray.client_cpus)),
                     fail_clients=dict(fail_clients or {}))
    evaluator = Evaluator(prepared)
    sink = (sink_factory or (lambda p, r: RoundLog(r)))(prepared, run_dir)
    state = {"error": None, "accuracy": float("nan"), "loss": float("nan"), "rounds": 0}
    bar = _progress(progress, f.rounds)

    def observe(update) -> None:
        weights = update.new if update.new is not None else update.previous
        loss, acc = evaluator(weights)
        state.update(accuracy=acc, loss=loss, rounds=update.round)
        sink(update, round_record(update, acc, loss))
        bar.advance(f"round {update.round}/{f.rounds}: accuracy {acc:.3f}")

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            strategy = AuditedStrategy(build_strategy(s, sampled), observe)
            strategy.start(grid=grid, initial_arrays=ArrayRecord(prepared.initial_weights), num_rounds=f.rounds)
            sink.finish()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
            state["error"] = exc

    backend_config = {"client_resources": {"num_cpus": s.ray.client_cpus, "num_gpus": s.ray.client_gpus}}
    if s.dp.mode == "client":
        backend_config["actor"] = {"tensorflow": 0}
    try:
        with bar:
            run_simulation(server_app=server_app, client_app=make_client_app(spec, s.dp.mode == "client"),
                           num_supernodes=f.clients, backend_config=backend_config)
    finally:
        import ray as _ray

        if _ray.is_initialized():
            _ray.shutdown()
    if state["error"] is not None:
        err = state["error"]
        raise err if isinstance(err, FedAuditError) else FedAuditError(f"federation failed: {err!r}") from err
    if state["rounds"] < f.rounds:
        raise FedAuditError(f"federation stopped after {state['rounds']} of {f.rounds} rounds (see the log above)")
    return FederationResult(run_dir, state["rounds"], state["accuracy"], state["loss"], time.time() - t0, ray_seconds)


class _progress:
    """A rich progress bar over rounds (silent when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled = enabled
        self.total = total
        self._lock = threading.Lock()
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]federation"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.description}"), TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=False)
            self.task = self.progress.add_task("starting Ray", total=total)

    def __enter__(self):
        if self.enabled:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)

    def advance(self, description: str) -> None:
        if self.enabled:
            with self._lock:
                self.progress.update(self.task, advance=1, description=description)
