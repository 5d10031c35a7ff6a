"""The Auditor Ray actor (one per run, named) and the round sink that feeds it from the ServerApp.

The sink runs in the ServerApp's thread. After each aggregation it writes the round's utility line to
rounds.jsonl, puts theta_prev, every client's theta_k and the new theta in the object store, submits
``observe`` and returns without waiting; ``finish`` (called before the ServerApp returns) waits for every
submitted round, then for the aggregation.

The actor takes ``num_cpus=0`` (Flower sizes its client pool from the cluster's CPUs; an auditor holding one
would starve a client) and ``ray.auditor_gpus`` GPUs, with TensorFlow's memory growth on so that it shares a
GPU with client actors. It is restartable (``max_restarts=-1``, ``max_task_retries=-1``): if its process
dies, Ray starts it again and resubmits the rounds it had not finished; the new instance reads what the
old one wrote (``audit/`` and rounds.jsonl) and audits only the rounds that are missing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from fedaudit import faults
from fedaudit.auditor.executors import RayExecutor
from fedaudit.auditor.records import AuditRecords, scenario_records
from fedaudit.auditor.runtime import auditor_threads, configure_tensorflow, cpu_seconds, max_rss_mb
from fedaudit.auditor.state import AUDIT_DIR, audited_rounds, locked, merge_round
from fedaudit.errors import FedAuditError
from fedaudit.twins import audited_here
from fedaudit.rundir import atomic_write_text, read_jsonl, upsert_jsonl

log = logging.getLogger(__name__)


def actor_name(run_dir: Path) -> str:
    return f"fedaudit-auditor-{Path(run_dir).name}"


class Auditor:
    """The adversary as a Ray actor: a thin shell around :class:`fedaudit.auditor.core.AuditCore`.

    The constructor takes no data: Ray cannot rebuild constructor arguments that live in the object store
    when it restarts an actor (ray-project/ray#53727). Each ``observe`` call carries ``[ref]``, a one-element
    list holding the ObjectRef of the audited records (x, y), which the driver owns and keeps alive for the
    whole run; the actor fetches it once, on its first round (again after a restart).
    """

    def __init__(self, run_dir: str, scenario, num_classes: int, threads: int = 1, dense=None):
        started = time.perf_counter()
        from fedaudit.federation.runtime import quiet_environment

        quiet_environment()
        self.dense = dense
        if dense is None:       # the signals need TensorFlow: import it now, while Flower starts, not in round 1
            configure_tensorflow(threads)
        try:
            from threadpoolctl import threadpool_limits

            self._limits = threadpool_limits(threads)
        except ImportError:
            self._limits = None
        self.run_dir = Path(run_dir)
        self.scenario = scenario
        self.num_classes = num_classes
        self.threads = int(threads)
        self.core = None
        done = sorted(audited_rounds(self.run_dir, audited_here(scenario)))
        path = self.run_dir / AUDIT_DIR / "starts.jsonl"
        with locked(path):
            start = len(read_jsonl(path)) + 1
            upsert_jsonl(path, {"start": start, "pid": os.getpid(), "time": time.time(), "rounds_done": done,
                                "init_seconds": round(time.perf_counter() - started, 3),
                                "init_cpu_seconds": round(cpu_seconds(), 3)}, key="start")
        if start > 1:
            log.warning("auditor restarted (start %d); rounds already audited: %s", start, done)

    def _core(self, data: list):
        if self.core is None:
            import ray

            from fedaudit.auditor.core import AuditCore

            x, y = ray.get(data[0])
            records = AuditRecords.load(self.run_dir / AUDIT_DIR / "records.npz")
            r = self.scenario.ray
            executor = RayExecutor(tasks=r.audit_tasks, cpus=r.audit_cpus, gpus=r.auditor_gpus,
                                   inferences_here=self.dense is None)
            self.core = AuditCore(self.run_dir, self.scenario, records, x, y, num_classes=self.num_classes,
                                  executor=executor, data=data[0], threads=self.threads, dense=self.dense)
        return self.core

    def prepare(self, data: list) -> None:
        """Build the core and do a first round's one-time work now (:meth:`AuditCore.warm`), while the clients
        train round 1. ``data`` as for :meth:`observe`; a failure is logged and left to the rounds to meet."""
        try:
            self._core(data).warm()
        except Exception:  # noqa: BLE001 - the rounds build what they need themselves
            log.warning("preparing the audit failed", exc_info=True)

    def observe(self, round_: int, record: dict, data: list, previous, new: list, client_ids,
                client_weights: list, aggregate: list | None = None) -> str:
        """Audit one round. ``new`` and ``client_weights`` hold ObjectRefs (nested, so that Ray hands them
        over unresolved and audit tasks on other nodes fetch them where they run); ``aggregate`` likewise (secure
        aggregation: the sum the server computed, where it differs from the new global model)."""
        try:
            with self._all_cpus(round_ >= self.scenario.federation.rounds):
                out = self._core(data).observe(round_, previous, dict(zip(client_ids, client_weights)), new[0],
                                               record, aggregate=(aggregate or [None])[0])
        except Exception as exc:  # noqa: BLE001 - an audit failure must not stop the federation
            log.exception("auditing round %d failed", round_)
            merge_round(self.run_dir, round_, {"audit_error": repr(exc)})
            return f"error: {exc!r}"
        return "skipped" if out is None else "audited"

    def finish(self) -> dict:
        from fedaudit.auditor.aggregate import aggregate_run

        started = time.perf_counter()
        with self._all_cpus(True):
            summary = aggregate_run(self.run_dir)
        atomic_write_text(self.run_dir / AUDIT_DIR / "aggregate_timing.json",
                          json.dumps({"aggregate_seconds": round(time.perf_counter() - started, 4),
                                      "process_cpu_seconds": round(cpu_seconds(), 3),
                                      "max_rss_mb": round(max_rss_mb(), 1),
                                      # whether this process loaded TensorFlow (a Dense model's audit needs not)
                                      "tensorflow_loaded": "tensorflow" in sys.modules}) + "\n")
        return summary

    @staticmethod
    def _all_cpus(when: bool):
        """Every CPU of the machine for the math libraries, ``when`` the clients are done training (the last
        round and the aggregation run after them): the run's tail is the audit alone."""
        import contextlib

        if not when:
            return contextlib.nullcontext()
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return contextlib.nullcontext()
        return threadpool_limits(os.cpu_count() or 1)

    def pid(self) -> int:
        return os.getpid()


class AuditorSink:
    """Round sink for :func:`fedaudit.federation.driver.run_federation` that feeds the Auditor actor.

    Fault injection (:mod:`fedaudit.faults`): a plan's auditor kill happens right after that round is submitted,
    once the earlier rounds are written (so the restarted actor has rounds to skip); a client's NaN fault
    replaces its returned weights by NaN before the auditor sees them (the federation itself is unaffected).
    """

    def __init__(self, prepared, run_dir):
        import ray

        s = prepared.scenario
        self.run_dir = Path(run_dir)
        ledger, data = prepared.ledger, prepared.dataset
        path = self.run_dir / AUDIT_DIR / "records.npz"
        if path.exists():
            records = AuditRecords.load(path)
        else:
            records = scenario_records(s, ledger.owner, data.y, ledger.num_clients)
            records.save(path)
        gpus = float(s.ray.auditor_gpus)
        available = float(ray.cluster_resources().get("GPU", 0.0))
        if gpus > available:
            log.warning("ray.auditor_gpus = %g but the cluster has %g GPUs; the auditor runs on CPU", gpus, available)
            gpus = 0.0
        actor_cls = ray.remote(Auditor).options(
            name=actor_name(self.run_dir), num_cpus=0, num_gpus=gpus, max_restarts=-1, max_task_retries=-1)
        self.data_ref = ray.put((data.x[records.index], data.y[records.index]))   # owned here, kept alive
        from fedaudit.auditor.core import describe_scenario_model

        # a stack of Dense layers: its signals in NumPy, no TensorFlow in the auditor; with GPUs asked for, the
        # TensorFlow probe runs there instead
        dense = describe_scenario_model(s, data.input_shape, data.num_classes) if not gpus else None
        self.actor = actor_cls.remote(str(self.run_dir), s, data.num_classes, auditor_threads(), dense)
        self.actor.prepare.remote([self.data_ref])       # while the clients train round 1
        self.refs: list = []

    def __call__(self, update, record: dict) -> None:
        import ray

        merge_round(self.run_dir, update.round, record)      # the utility line, at once
        clients = dict(update.clients)
        for k in clients:
            if faults.client_fault(k, update.round) == faults.NAN:
                clients[k] = [np.full_like(np.asarray(w, dtype=np.float32), np.nan) for w in clients[k]]
        ids = sorted(clients)
        weights = [ray.put(clients[k]) for k in ids]
        previous = ray.put(update.previous)
        new = ray.put(update.new) if update.new is not None else None
        # secure aggregation: no client's weights (``clients`` is empty), the sum where it differs from ``new``
        summed = getattr(update, "aggregate", None)
        summed = [ray.put(summed)] if summed is not None else None
        self.refs.append(self.actor.observe.remote(update.round, record, [self.data_ref], previous, [new], ids,
                                                   weights, summed))
        if faults.auditor_should_die(update.round):
            ray.get(self.refs[:-1])    # the earlier rounds are written: the restart must find and skip them
            log.warning("fault injection: killing the auditor after round %d", update.round)
            ray.kill(self.actor, no_restart=False)

    def finish(self) -> dict:
        """Wait for every submitted round, then aggregate; returns the run's audit summary."""
        import ray

        started = time.perf_counter()
        for ref in self.refs:
            status = ray.get(ref)
            if status.startswith("error"):
                log.error("auditor: %s", status)
        rounds_waited = time.perf_counter() - started
        try:
            return ray.get(self.actor.finish.remote())
        except ray.exceptions.RayTaskError as exc:
            raise FedAuditError(f"audit: the final aggregation failed: {exc}") from exc
        finally:
            ray.kill(self.actor, no_restart=True)
            atomic_write_text(self.run_dir / AUDIT_DIR / "drain.json", json.dumps({
                "rounds_wait_seconds": round(rounds_waited, 4),
                "total_wait_seconds": round(time.perf_counter() - started, 4)}) + "\n")


def auditor_sink(prepared, run_dir) -> AuditorSink:
    """The sink factory :func:`fedaudit.run.run_scenario` passes to the driver when the audit is on."""
    return AuditorSink(prepared, run_dir)
