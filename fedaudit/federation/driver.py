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
from fedaudit.federation.active import plan_for
from fedaudit.federation.runtime import init_ray, quiet_environment
from fedaudit.interrupt import Interrupted, graceful_stop
from fedaudit.interrupt import reinstall as reinstall_signal_handlers
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
    """The utility part of a round's line in rounds.jsonl (a :class:`fedaudit.schema.RoundLine` without views, as
    the JSON object the round sinks merge): ``model_accuracy`` is the global model's test accuracy."""
    from fedaudit.schema import RoundLine

    losses = [update.train_loss[k] for k in sorted(update.train_loss)]
    weights = [update.examples[k] for k in sorted(update.train_loss)]
    line = RoundLine(
        round=update.round,
        train_loss=float(np.average(losses, weights=weights)) if losses else None,
        model_accuracy=accuracy,
        loss=loss,
        clients=sorted(update.clients) if update.clients else sorted(update.participants),
        failed=[str(x) for x in update.failed],
        non_finite_clients=sorted(k for k, w in update.clients.items() if not all(np.isfinite(a).all() for a in w)),
        wall_seconds=round(time.time() - update.started, 3),
    )
    record = line.to_dict()
    record.pop("audit_seconds")         # the auditor's, merged into the same line
    return record


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
                   progress: bool = True, start_round: int = 0, start_weights: list | None = None,
                   start_state: dict | None = None, capture_dir: str = "") -> FederationResult:
    """Train the scenario's federation with Flower's simulation runtime on Ray.

    ``sink_factory(prepared, run_dir)`` returns the callable that receives each round (default: RoundLog);
    it is created after Ray is up, so it may start actors, and its ``finish()`` is awaited before the
    ServerApp returns. After each round the global weights and the strategy's state are checkpointed in
    ``run_dir/checkpoints`` (see :mod:`fedaudit.runstate`) before the round goes to the sink.

    A resumed run passes ``start_round`` (the rounds already done), ``start_weights`` and ``start_state`` (its
    checkpoint): rounds are numbered from ``start_round + 1`` for the strategy and the clients alike.

    SIGINT / SIGTERM (in the main thread): the round in progress is dropped, the messages in flight finish,
    Ray is shut down and :class:`fedaudit.interrupt.Interrupted` is raised, with ``round`` set to the round
    that was in progress. Test hook: ``capture_dir`` (secure aggregation) makes each client save the weights it
    trained there (see :mod:`fedaudit.federation.secagg`); faults are injected with :mod:`fedaudit.faults`.
    """
    with graceful_stop() as stop:
        return _run_federation(prepared, Path(run_dir), sink_factory, progress, int(start_round), start_weights,
                               start_state, stop, str(capture_dir or ""))


def _run_federation(prepared, run_dir, sink_factory, progress, start_round, start_weights, start_state, stop,
                    capture_dir="") -> FederationResult:
    quiet_environment()
    import ray
    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedaudit.federation.client import make_client_app
    from fedaudit.federation.strategy import AuditedStrategy, RunStopped, build_strategy, restore_strategy_state
    from fedaudit.federation.task import TrainSpec
    from fedaudit.runstate import save_checkpoint

    logging.getLogger("flwr").setLevel(logging.WARNING)
    s = prepared.scenario
    f = s.federation
    if not 0 <= start_round <= f.rounds:
        raise FedAuditError(f"cannot start after round {start_round}: the scenario has {f.rounds} rounds")
    sampled = max(1, int(f.clients * f.fraction))
    t0 = time.time()
    state = {"error": None, "accuracy": float("nan"), "loss": float("nan"), "rounds": start_round}
    strategy_box: dict = {}
    try:
        init_ray(s.ray.address, s.ray.num_cpus)
        reinstall_signal_handlers()         # ray.init replaced the SIGTERM handler with its own
        ray_seconds = time.time() - t0
        d = prepared.dataset
        plan = plan_for(s, d, prepared.ledger)        # a deviating adversary's own run: what it does
        if plan is not None and plan.inconsistent_target is not None and not capture_dir:
            capture_dir = str(run_dir / TRUTH_DIR)     # the target's true model, to measure its recovery
        spec = TrainSpec(data_ref=ray.put((d.x, d.y)), owner=prepared.ledger.owner, model_name=s.model.name,
                         model_options=dict(s.model.options), input_shape=d.input_shape, num_classes=d.num_classes,
                         optimizer=f.optimizer, learning_rate=f.learning_rate, local_epochs=f.local_epochs,
                         batch_size=f.batch_size, seed=f.seed, client_threads=max(1, int(s.ray.client_cpus)),
                         capture_dir=capture_dir, active=plan)
        evaluator = Evaluator(prepared)
        canaries = None
        if s.audit.canaries:
            from fedaudit.federation.canary import CanaryAudit

            canaries = CanaryAudit(s, prepared.initial_weights, run_dir)
            canaries.forget_after(start_round)
        sink = (sink_factory or (lambda p, r: RoundLog(r)))(prepared, run_dir)
        bar = _progress(progress, f.rounds, done=start_round)

        def observe(update) -> None:
            weights = update.new if update.new is not None else update.previous
            loss, acc = evaluator(weights)
            state.update(accuracy=acc, loss=loss, rounds=update.round)
            record = round_record(update, acc, loss)
            record.update(round_norms(update))
            if update.deviation:
                record["deviation"] = deviation_record(update, run_dir / TRUTH_DIR)
            for path in (run_dir / TRUTH_DIR).glob(f"round_{update.round:04d}_client_*.npz"):
                path.unlink()           # a true model is ground truth for one round's measurement only
            if canaries is not None:
                without = canaries.observe(update.round, update.previous, update.new)
                if without is not None and np.isfinite(canaries.contribution).all():
                    record["loss_without_canaries"], record["accuracy_without_canaries"] = evaluator(without)
            save_checkpoint(run_dir, update.round, weights, _state_of(strategy_box.get("strategy")))
            sink(update, record)
            _prune(run_dir, s)
            bar.advance(f"round {update.round}/{f.rounds}: accuracy {acc:.3f}")

        def _run_secure(grid, context, weights) -> None:
            from fedaudit.federation import secagg

            moves = None
            if plan is not None and plan.inconsistent_target is not None:
                from fedaudit.federation.active import SecureServerMoves

                moves = SecureServerMoves(plan, secagg.uniform_weights(s))
            strategy = secagg.AuditedLegacyStrategy(
                secagg.build_legacy_strategy(s, sampled, weights), observe, round_offset=start_round,
                stop=stop.event, num_clients=f.clients if sampled == f.clients else None, active=moves,
                noise_seed=f.seed)
            strategy_box["strategy"] = strategy
            secagg.run_secure(grid, context, strategy, s, sampled, f.rounds - start_round,
                              secagg.max_weight(s, prepared.ledger.owner))

        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:
            try:
                # NumPy's global generator, for whatever in the server draws from it; the central DP noise is
                # seeded again before each aggregation (strategy.seed_round_noise)
                np.random.seed([f.seed, start_round])
                weights = start_weights if start_weights is not None else prepared.initial_weights
                if f.secure_aggregation:
                    _run_secure(grid, context, weights)
                else:
                    inner = build_strategy(s, sampled, canaries)
                    if start_state:
                        restore_strategy_state(inner, start_state)
                    strategy = AuditedStrategy(inner, observe, round_offset=start_round, stop=stop.event,
                                               num_clients=f.clients if sampled == f.clients else None,
                                               active=server_moves(plan, s, d), assign=(f.seed, f.clients),
                                               noise_seed=f.seed)
                    strategy_box["strategy"] = strategy
                    strategy.start(grid=grid, initial_arrays=ArrayRecord([np.asarray(w) for w in weights]),
                                   num_rounds=f.rounds - start_round)
                _finish(sink, stop.event)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
                state["error"] = exc

        # A client actor whose process dies is started again by Ray (its message in flight fails, and the client
        # is recorded as failed for that round); Flower's pool would otherwise keep handing messages to the dead
        # actor. Flower passes client_resources to the actor's .options(), so max_restarts travels with them.
        backend_config = {"client_resources": {"num_cpus": s.ray.client_cpus, "num_gpus": s.ray.client_gpus,
                                               "max_restarts": -1}}
        if s.dp.mode == "client":
            backend_config["actor"] = {"tensorflow": 0}
        if stop.requested:
            raise RunStopped("stop requested")
        if start_round < f.rounds:
            with bar:
                if f.secure_aggregation:
                    from fedaudit.federation.secagg import make_secure_client_app, max_weight

                    client_app = make_secure_client_app(spec, s, max_weight(s, prepared.ledger.owner))
                else:
                    client_app = make_client_app(spec, s.dp.mode == "client",
                                                 s.dp if s.dp.mode == "local" else None)
                run_simulation(server_app=server_app, client_app=client_app,
                               num_supernodes=f.clients, backend_config=backend_config)
    except RunStopped:
        pass
    except Interrupted as exc:          # stopped at once (a second signal): say which round was in progress
        strategy = strategy_box.get("strategy")
        exc.round = strategy.current_round if strategy is not None else None
        raise
    finally:
        import ray as _ray

        if stop.requested:
            log.info("runtime stopped %.1f s after the signal", time.monotonic() - stop.requested_at)
        if _ray.is_initialized():
            _ray.shutdown()
    if stop.requested:
        log.info("Ray shut down %.1f s after the signal", time.monotonic() - stop.requested_at)
        strategy = strategy_box.get("strategy")
        raise Interrupted(stop.signum, round_=strategy.current_round if strategy is not None else None)
    if state["error"] is not None:
        err = state["error"]
        raise err if isinstance(err, FedAuditError) else FedAuditError(f"federation failed: {err!r}") from err
    if state["rounds"] < f.rounds:
        raise FedAuditError(f"federation stopped after {state['rounds']} of {f.rounds} rounds (see the log above)")
    return FederationResult(run_dir, state["rounds"], state["accuracy"], state["loss"], time.time() - t0, ray_seconds)


TRUTH_DIR = "truth"     # a deviating server's run under secure aggregation: the target's true model, per round


def server_moves(plan, scenario, dataset):
    """The deviating server's moves for the Message-API strategy (None: the server follows the protocol)."""
    from fedaudit.federation.active import ACTIVE_SERVER, ISOLATING_SERVER, ServerMoves, ascent_for

    if plan is None or plan.kind not in (ACTIVE_SERVER, ISOLATING_SERVER):
        return None
    ascent = ascent_for(scenario.model.name, scenario.model.options, dataset.input_shape, dataset.num_classes) \
        if plan.kind == ACTIVE_SERVER else None
    return ServerMoves(plan, ascent, dataset.x, dataset.y)


def round_norms(update) -> dict:
    """How the round looks to a deployment that monitors norms: the model sent (and, when the server deviated, the
    model it would have sent) and the median norm of the clients' updates."""
    from fedaudit.federation.active import norm, update as delta

    ups = [norm(delta(w, update.previous)) for w in update.clients.values()] if update.previous else []
    return {"norms": {"sent": norm(update.previous) if update.previous else None,
                      "honest": norm(update.honest) if update.honest is not None else None,
                      "update_median": float(np.median(ups)) if ups else None}}


def deviation_record(update, truth_dir: Path) -> dict:
    """What the deviating adversary did this round; under secure aggregation, how exactly the target's update was
    recovered (cosine of the recovered with the true update, the true one as the target saved it)."""
    out = dict(update.deviation)
    target = out.get("recovered_client")
    if target is not None:
        from fedaudit.federation.active import cosine, update as delta

        path = Path(truth_dir) / f"round_{update.round:04d}_client_{int(target):04d}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                trained = [z[k] for k in sorted(k for k in z.files if k.startswith("trained__"))]
            recovered = update.clients[target]
            out["recovered_cosine"] = cosine(delta(recovered, update.previous), delta(trained, update.previous))
            out["recovered_max_abs_error"] = float(max(np.max(np.abs(np.asarray(a, np.float64) - b))
                                                      for a, b in zip(recovered[:-1], trained[:-1]))) \
                if len(trained) > 1 else None
    return out


def _state_of(strategy) -> dict:
    if strategy is None:
        return {}
    from fedaudit.federation.strategy import strategy_state

    return strategy_state(strategy.inner)


def _prune(run_dir: Path, scenario) -> None:
    """Checkpoints below the round a resume would start from are no longer needed."""
    from fedaudit.runstate import prune_checkpoints, resume_round

    prune_checkpoints(run_dir, resume_round(run_dir, scenario))


def _finish(sink, stop: threading.Event) -> None:
    """``sink.finish()`` (the audit's drain and aggregation), given up on when a stop is requested."""
    from fedaudit.federation.strategy import RunStopped

    done = threading.Event()
    box: dict = {}

    def target():
        try:
            box["result"] = sink.finish()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="fedaudit-sink-finish", daemon=True).start()
    while not done.wait(0.2):
        if stop.is_set():
            raise RunStopped("stop requested while the audit finished")
    if "error" in box:
        raise box["error"]


class _progress:
    """A rich progress bar over rounds (silent when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int = 0):
        self.enabled = enabled
        self.total = total
        self._lock = threading.Lock()
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]federation"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.description}"), TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=False)
            self.task = self.progress.add_task("starting Ray", total=total, completed=done)

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
