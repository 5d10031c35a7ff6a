"""The ServerApp side: :func:`audit_strategy` wraps your Flower strategy the way Flower's own wrappers do.

::

    strategy = audit_strategy(FedAvg(fraction_train=1.0, min_train_nodes=2), data=data, model=model)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.get_weights()), num_rounds=3)

:class:`AuditStrategy` is :class:`fedaudit.federation.strategy.AuditedStrategy` (it hands every round, theta_prev,
each client's theta_k with its partition id and the new theta, to an observer and returns at once) with the
observer that fedaudit's own federation uses: the auditor Ray actor's sink
(:class:`fedaudit.auditor.actor.AuditorSink`), fed with the same ``prepared`` object (scenario, dataset, ledger)
that ``fedaudit run`` builds, here built from the app's :class:`~fedaudit.flower.FederatedData` and Keras model.
Its ``start`` runs your strategy, then waits for the audit, aggregates it and writes the report, so the run
directory holds what ``fedaudit run`` writes: scenario.toml (the app's run, described), ledger.npz, rounds.jsonl,
clients.csv, records.csv, member/nonmember_probs.npy, summary.json, plots/, report.html and tensorboard/.

The audit starts with the first aggregation: under Flower's simulation runtime Ray is up by then (the auditor
joins it, ``num_cpus=0``); elsewhere (a deployment with SuperNodes) a local Ray bound to 127.0.0.1 is started
for the auditor, or the cluster at ``ray_address`` is joined.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.serverapp.strategy import Strategy

from fedaudit.config import FLOWER_STRATEGY_PREFIX, STRATEGIES, scenario_from_dict
from fedaudit.errors import ConfigError, FedAuditError
from fedaudit.federation.strategy import AuditedStrategy, unwrap_strategy
from fedaudit.flower.data import FederatedData, resolve_data

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
#: keys of ``training=``: how the app's clients train (reference models copy it; the report shows it)
TRAINING_KEYS = ("local_epochs", "batch_size", "learning_rate", "optimizer")


def _unwrap(strategy) -> tuple[Strategy, dict]:
    """(the strategy inside Flower's DP wrappers, the [dp] table those wrappers describe)."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    strategy, wrapper = unwrap_strategy(strategy)
    dp = {}
    if wrapper is not None:
        dp = {"mode": "server" if isinstance(wrapper, DifferentialPrivacyServerSideFixedClipping) else "client",
              "noise_multiplier": float(wrapper.noise_multiplier), "clipping_norm": float(wrapper.clipping_norm)}
    return strategy, dp


def describe_strategy(strategy) -> dict:
    """The [federation] and [dp] keys a scenario uses for ``strategy`` (a Flower strategy, maybe DP-wrapped)."""
    base, dp = _unwrap(strategy)
    name = type(base).__name__
    federation = {"strategy": name.lower() if name.lower() in STRATEGIES else f"{FLOWER_STRATEGY_PREFIX}{name}"}
    fraction = getattr(base, "fraction_train", None)
    if isinstance(fraction, (int, float)) and 0 < fraction <= 1:
        federation["fraction"] = float(fraction)
    if isinstance(getattr(base, "proximal_mu", None), (int, float)):
        federation["proximal_mu"] = float(base.proximal_mu)
    return {"federation": federation, "dp": dp}


class AuditStrategy(AuditedStrategy):
    """Your strategy, audited (see the module's docstring); build it with :func:`audit_strategy`."""

    def __init__(self, strategy: Strategy, *, data, model, out=None, name: str = "flower-app",
                 audit: dict | None = None, training: dict | None = None, seed: int = 0, ray_address: str = "",
                 auditor_gpus: float = 0.0, report: bool = True):
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"strategy: expected a Flower strategy (flwr.serverapp.strategy.Strategy), got "
                              f"{type(strategy).__name__}")
        if not (isinstance(data, FederatedData) or callable(data)):
            raise ConfigError(f"data: expected a fedaudit.flower.FederatedData or a function of the number of "
                              f"partitions returning one, got {type(data).__name__}")
        training = dict(training or {})
        unknown = sorted(set(training) - set(TRAINING_KEYS))
        if unknown:
            raise ConfigError(f"training.{unknown[0]}: unknown key; allowed: {', '.join(TRAINING_KEYS)}")
        self.run_dir = None
        self._options = {"name": name, "audit": dict(audit or {}), "training": training, "seed": int(seed),
                         "ray": {"address": ray_address, "auditor_gpus": float(auditor_gpus)}}
        self._check_options()
        from fedaudit.models.keras_file import as_logits

        as_logits(model)     # the auditor rebuilds the architecture from its Keras config: fail now, not in round 1
        from fedaudit.run import resolve_run_dir

        self.run_dir = resolve_run_dir(self._scenario_raw(None, 1), out).resolve() if out is not None else None
        self._out_given = out is not None
        self._data, self._model, self._report = data, model, bool(report)
        self._sink = self._evaluator = None
        self._own_ray = False
        self._num_rounds = None
        self._initial = None
        super().__init__(strategy, self._observe)

    # ---- the scenario that describes this app's run ----------------------------------------------------------

    def _scenario_raw(self, data: FederatedData | None, rounds: int):
        o = self._options
        described = describe_strategy(self.inner) if hasattr(self, "inner") else {"federation": {}, "dp": {}}
        pop, test = data.fractions() if data is not None else (0.25, 0.2)
        raw = {
            "name": o["name"],
            "data": {"dataset": data.name if data is not None else "flower-app", "population_fraction": pop,
                     "test_fraction": test},
            "model": {"name": "keras-file", "path": str((self.run_dir or Path(".")).resolve() / MODEL_FILE)},
            "federation": {"clients": data.num_partitions if data is not None else 1, "rounds": int(rounds),
                           "partition": data.partitioner if data is not None else "iid", "seed": o["seed"],
                           **o["training"], **described["federation"]},
            "audit": {"enabled": True, **o["audit"]},
            "ray": dict(o["ray"]),
        }
        if described["dp"]:
            raw["dp"] = described["dp"]
        return scenario_from_dict(raw)

    def _check_options(self) -> None:
        """Bad audit or training keys are reported when the strategy is built, before any round runs."""
        self._scenario_raw(None, 1)

    # ---- the Flower API ------------------------------------------------------------------------------------

    def start(self, grid, initial_arrays, num_rounds: int = 3, timeout: float = 3600, train_config=None,
              evaluate_config=None, evaluate_fn=None):
        """Run the wrapped strategy (Flower's ``Strategy.start``), then finish the audit and write the report."""
        if self._num_rounds is not None:
            raise FedAuditError("AuditStrategy.start: this strategy already ran; build a new one for a new run")
        self._num_rounds = int(num_rounds)
        self._initial = initial_arrays.to_numpy_ndarrays()
        self._scenario_raw(None, self._num_rounds)          # rounds checked as a scenario checks them
        if self.run_dir is None:
            from fedaudit.rundir import new_run_dir

            self.run_dir = new_run_dir("runs", self._options["name"]).resolve()
        try:
            result = super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                                   evaluate_fn)
            if self._sink is None:
                raise FedAuditError("audit: no round was aggregated (no client replied), so nothing was audited")
            self._finish()
        finally:
            if self._own_ray:
                from fedaudit.federation.runtime import shutdown_ray

                shutdown_ray()
        return result

    # ---- the audit ---------------------------------------------------------------------------------------------

    def _begin(self, update) -> None:
        """At the first aggregation: the data, the run dir's inputs, Ray, the evaluator and the auditor's sink."""
        import numpy as np

        from fedaudit.data import Dataset
        from fedaudit.federation.driver import Evaluator, Prepared, RoundLog, write_inputs

        data = resolve_data(self._data, update.num_partitions)
        outside = sorted(k for k in update.clients if not 0 <= k < data.num_partitions)
        if outside:
            raise FedAuditError(f"data: clients report partition ids {outside}, but the data has {data.num_partitions} "
                                "partitions; build it with the federation's number of partitions")
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        scenario = self._scenario_raw(data, self._num_rounds)
        self._model.save(self.run_dir / MODEL_FILE)
        prepared = Prepared(scenario, Dataset(data.name, data.x, data.y, data.num_classes), data.ledger,
                            [np.asarray(w) for w in self._initial])
        write_inputs(self.run_dir, prepared)
        log.info("fedaudit: auditing this run into %s", self.run_dir)
        import ray

        if not ray.is_initialized():
            from fedaudit.federation.runtime import init_ray

            init_ray(scenario.ray.address)
            self._own_ray = True
        self._evaluator = Evaluator(prepared)
        if scenario.audit.enabled:
            from fedaudit.auditor import auditor_sink

            self._sink = auditor_sink(prepared, self.run_dir)
        else:
            self._sink = RoundLog(self.run_dir)

    def _observe(self, update) -> None:
        from fedaudit.federation.driver import round_record

        if self._sink is None:
            self._begin(update)
        weights = update.new if update.new is not None else update.previous
        loss, accuracy = self._evaluator(weights)
        self._sink(update, round_record(update, accuracy, loss))

    def _finish(self) -> None:
        self._sink.finish()
        from fedaudit.run import finish_run

        for line in finish_run(self.run_dir, report=self._report):
            log.warning("fedaudit: %s", line)
        log.warning("fedaudit: run directory: %s", self.run_dir)


def audit_strategy(strategy: Strategy, *, data, model, out=None, name: str = "flower-app", audit: dict | None = None,
                   training: dict | None = None, seed: int = 0, ray_address: str = "", auditor_gpus: float = 0.0,
                   report: bool = True) -> AuditStrategy:
    """Wrap ``strategy`` so that every round is audited (Flower's wrapper idiom: the result is a Strategy).

    data: a :class:`~fedaudit.flower.FederatedData` (which records each partition holds, the population, the test
        split), or a function ``f(num_partitions) -> FederatedData`` called once the clients report that number.
    model: your Keras model (its architecture; each round's weights come from the clients). A final softmax is
        fine: the audit reads the logits under it.
    out: the run directory (new or empty; default ``runs/<name>-<timestamp>`` under the ServerApp's folder).
    audit: ``[audit]`` keys (``threat_models``, ``attacks``, ``attack_fraction``, ``reference_models``, ...).
    training: how your clients train (``local_epochs``, ``batch_size``, ``learning_rate``, ``optimizer``): the
        reference models copy it and the report states it.
    """
    return AuditStrategy(strategy, data=data, model=model, out=out, name=name, audit=audit, training=training,
                         seed=seed, ray_address=ray_address, auditor_gpus=auditor_gpus, report=report)


__all__ = ["audit_strategy", "AuditStrategy", "describe_strategy"]
