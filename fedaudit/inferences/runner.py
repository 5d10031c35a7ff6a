"""Where the inferences beyond membership run: what they read of the auditor, packed so that a Ray task can run them.

The inferences train shadow clients and invert updates with TensorFlow. Run in the auditor's process, they would
load TensorFlow there (hundreds of MB that stay for the whole run, and seconds of import and tracing in the first
round) although the membership audit of a Dense model needs NumPy only. So the auditor hands them
:class:`InferenceInputs` (the scenario, the audited records and their data; the same object every round) and an
:class:`InferenceRound` (what the adversary was handed this round), and its executor runs :func:`run_inferences`
beside the round's other work in an :class:`InferenceWorker` actor of its own, kept for the run
(:class:`fedaudit.auditor.executors.RayExecutor`); or, when the auditor loaded TensorFlow for its own signals (a
model that is not a Dense stack), in a thread of the auditor's process, which then pays for TensorFlow once, not
twice; or in its own process, when asked (:class:`~fedaudit.auditor.executors.InlineExecutor`). Whichever, the
same function computes the same numbers. :func:`warm_inferences` builds and traces their model before the first
round (the auditor starts it while the clients train round 1).

TensorFlow-free at import.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

#: the adversary's local-training copies this process built, by :attr:`InferenceInputs.key`: a Ray worker that
#: runs a run's inferences every round builds (and traces) its TensorFlow model once
_SIMULATORS: dict = {}


@dataclass
class InferenceInputs:
    """What the inferences read of the auditor (the ``core`` of :meth:`fedaudit.inferences.base.Inference.run`):
    the scenario, the audited records (:class:`~fedaudit.auditor.records.AuditRecords`), their data ``(x, y)``
    (or the ObjectRef of it) aligned with them, the number of classes, the run's seed, the model's input shape and
    the auditor's CPU threads. ``key`` names the run, for the simulator this process keeps."""

    scenario: object
    records: object
    data: object
    num_classes: int
    seed: int
    input_shape: tuple
    key: str
    threads: int = 1

    def inference_data(self) -> tuple:
        """The audited records' (x, y)."""
        from fedaudit.auditor.runtime import materialize

        if not isinstance(self.data, tuple):
            self.data = tuple(materialize(self.data))
        return self.data

    def inference_simulator(self):
        """The adversary's copy of a client's local training (it loads TensorFlow), built once per process."""
        sim = _SIMULATORS.get(self.key)
        if sim is None:
            from fedaudit.auditor.runtime import configure_tensorflow
            from fedaudit.inferences.simulate import LocalSimulator

            configure_tensorflow(self.threads)
            sim = _SIMULATORS[self.key] = LocalSimulator(self.scenario, self.input_shape, self.num_classes)
        return sim


@dataclass
class InferenceRound:
    """What the adversary was handed in one round, as the inferences read it (the ``ctx`` of
    :meth:`~fedaudit.inferences.base.Inference.run`): ``clients`` maps client ids to weights or their ObjectRefs
    (an inference fetches only those it reads); ``trained`` names the clients whose records the global model has
    seen by this round; ``non_finite`` the clients whose model was not finite."""

    round: int
    previous: object
    clients: dict
    new: object
    aggregate: object
    record: dict | None
    ids: list
    secure_aggregation: bool
    non_finite: list = field(default_factory=list)
    trained: set = field(default_factory=set)


def run_inferences(inputs: InferenceInputs, ctx: InferenceRound, names) -> dict:
    """The named inferences' results of one round, with where and at what cost they ran:
    ``{"results": {name: object}, "pid", "node", "seconds", "cpu_seconds", "max_rss_mb"}``."""
    from fedaudit.inferences.base import run_round
    from fedaudit.auditor.runtime import cpu_seconds, max_rss_mb

    started, cpu = time.perf_counter(), cpu_seconds()
    results = run_round(inputs, ctx, list(names))
    return {"results": results, "pid": os.getpid(), "node": _node(), "seconds": time.perf_counter() - started,
            "cpu_seconds": cpu_seconds() - cpu, "max_rss_mb": max_rss_mb()}


class InferenceWorker:
    """The process that runs a run's inferences round after round (a Ray actor of the auditor's): TensorFlow is
    imported, and the adversary's model built and traced, once per run, not once per round (Ray ends an idle task
    worker within seconds, and a new one would pay them again)."""

    def run(self, inputs: InferenceInputs, ctx: InferenceRound, names) -> dict:
        return run_inferences(inputs, ctx, names)

    def warm(self, inputs: InferenceInputs) -> None:
        warm_inferences(inputs)


def warm_inferences(inputs: InferenceInputs) -> None:
    """Load TensorFlow, build the adversary's model and trace its training and prediction steps on two records, so
    that the first round's inferences do not pay them (a failure here is left for that round to report)."""
    import logging

    try:
        sim = inputs.inference_simulator()
        x, y = inputs.inference_data()
        w = sim.trainer.get_weights()
        sim.train(w, x[:2], y[:2], seed=0)
        sim.probs(w, x[:2])
    except Exception:  # noqa: BLE001 - the round that needs them reports what failed
        logging.getLogger(__name__).warning("warming the inferences failed", exc_info=True)


def _node() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - where it ran is informative only
        return None


__all__ = ["InferenceInputs", "InferenceRound", "InferenceWorker", "run_inferences", "warm_inferences"]
