"""Executors of a round's audit jobs (:mod:`fedaudit.auditor.shard`): in this process, or as Ray tasks over the
cluster's nodes. Each is called as ``executor(spec, plan, data, previous, jobs, weights, references)`` and returns
the shards' :class:`~fedaudit.auditor.shard.ShardResult` list; ``executor.inferences(inputs, ctx, names)`` starts
the round's inferences beyond membership (:func:`fedaudit.inferences.runner.run_inferences`) and returns a function
that waits for their result; ``executor.warm_inferences(inputs)`` readies them before the first round."""

from __future__ import annotations

import logging

import numpy as np

from fedaudit.auditor.runtime import materialize
from fedaudit.auditor.shard import run_shard, shard_task

log = logging.getLogger(__name__)


class InlineExecutor:
    """Runs a round's jobs as one shard in this process (tests, and the auditor on a one-node Ray)."""

    def __call__(self, spec, plan, data, previous, jobs, weights, references) -> list:
        return [run_shard(spec, plan, data, previous, jobs, [materialize(w) for w in weights], references)]

    def warm_inferences(self, inputs) -> None:
        """Nothing to start ahead: the inferences run here, when their result is asked for."""

    def inferences(self, inputs, ctx, names):
        """The inferences run here, when their result is asked for."""
        from fedaudit.inferences.runner import run_inferences

        return lambda: run_inferences(inputs, ctx, names)


class RayExecutor:
    """Runs a round's jobs (:mod:`fedaudit.auditor.shard`) as Ray tasks over the cluster.

    ``tasks`` shards per round (0: one per alive node), each pinned (softly: another node takes it if that one
    is gone) to a node, round-robin, so that a cluster with more nodes audits a round proportionally faster.
    With one shard the jobs run in the auditor's own process: the same function, without a task. Each task
    asks for ``cpus`` CPUs only when the cluster has that many free beside Flower's client pool (which holds
    every CPU it can while the simulation runs), else for none (the OS then shares the CPUs with the clients),
    and for ``gpus`` GPUs when the cluster has them.
    """

    def __init__(self, tasks: int = 0, cpus: float = 0.0, gpus: float = 0.0, inferences_here: bool = False):
        self.tasks, self.cpus, self.gpus = int(tasks), float(cpus), float(gpus)
        self._refs: dict = {}
        self._inference_worker = None
        # an auditor that loaded TensorFlow for its own signals runs the inferences in a thread of its own
        # process (beside the round's attacks all the same) rather than in a second process that loads it again
        self._thread = None
        if inferences_here:
            from concurrent.futures import ThreadPoolExecutor

            self._thread = ThreadPoolExecutor(1, thread_name_prefix="fedaudit-inferences")

    def nodes(self) -> list:
        import ray

        return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)

    def _put_once(self, key: str, value):
        """One object-store copy of a value that does not change between rounds (the plan, the references)."""
        import ray

        held = self._refs.get(key)
        if held is None or held[0] is not value:
            held = (value, ray.put(value))
            self._refs[key] = held
        return held[1]

    def __call__(self, spec, plan, data, previous, jobs, weights, references) -> list:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = self.nodes()
        shards = min(len(jobs), self.tasks or len(nodes) or 1)
        if shards <= 1:
            return InlineExecutor()(spec, plan, materialize(data), previous, jobs, weights, references)
        cpus = self.cpus if self.cpus and ray.available_resources().get("CPU", 0.0) >= self.cpus * shards else 0.0
        if self.cpus and not cpus:
            log.info("audit tasks: fewer than %g free CPUs per task beside the client pool; sharing CPUs", self.cpus)
        gpus = self.gpus if self.gpus and ray.available_resources().get("GPU", 0.0) >= self.gpus * shards else 0.0
        task = ray.remote(shard_task)
        plan_ref, refs_ref = self._put_once("plan", plan), self._put_once("references", references)
        prev_ref = ray.put(previous)
        pending = []
        for i, group in enumerate(split_jobs(jobs, shards, plan)):
            node = nodes[i % len(nodes)] if nodes else None
            options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 2}
            if node is not None:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
            pending.append(task.options(**options).remote(spec, plan_ref, data, prev_ref, [jobs[j] for j in group],
                                                          refs_ref, *[weights[j] for j in group]))
        return ray.get(pending)

    def _worker(self):
        """The run's :class:`~fedaudit.inferences.runner.InferenceWorker` actor, started on first use."""
        import ray

        from fedaudit.inferences.runner import InferenceWorker

        if self._inference_worker is None:
            self._inference_worker = ray.remote(InferenceWorker).options(
                num_cpus=0, max_restarts=1, max_task_retries=1).remote()
        return self._inference_worker

    def warm_inferences(self, inputs) -> None:
        """Start the inferences' worker now and let it load TensorFlow and build and trace the adversary's model
        (:func:`fedaudit.inferences.runner.warm_inferences`) without waiting for it: the first round's inferences
        then find it ready."""
        if self._thread is not None:
            from fedaudit.inferences.runner import warm_inferences

            self._thread.submit(warm_inferences, inputs)
            return
        self._worker().warm.remote(self._put_once("inferences", inputs))

    def inferences(self, inputs, ctx, names):
        """The inferences start now in the run's :class:`~fedaudit.inferences.runner.InferenceWorker` actor (beside
        the round's attacks; TensorFlow, which they need, stays out of the auditor's process), or in this process's
        inference thread when the executor was made with ``inferences_here``; the returned
        function waits for them. The actor, started on first use and restarted once if it dies, asks for no CPU,
        as the audit tasks beside the client pool do; ``inputs`` goes to the object store once per run."""
        import ray

        if self._thread is not None:
            from fedaudit.inferences.runner import run_inferences

            return self._thread.submit(run_inferences, inputs, ctx, list(names)).result
        ref = self._worker().run.remote(self._put_once("inferences", inputs), ctx, list(names))
        return lambda: ray.get(ref)


def split_jobs(jobs: list, shards: int, plan) -> list[list[int]]:
    """Job indices in ``shards`` groups of about equal work (rows plus the samples every job scores)."""
    cost = [j.rows.size + plan.population_sample.size + (plan.source_sample.size // 4 if j.source else 0)
            + (j.null_rows.size // 4 if getattr(j, "null_rows", None) is not None else 0)   # forward passes only
            for j in jobs]
    groups, load = [[] for _ in range(shards)], np.zeros(shards)
    for j in sorted(range(len(jobs)), key=lambda j: (-cost[j], j)):
        g = int(np.argmin(load))
        groups[g].append(j)
        load[g] += cost[j]
    return [sorted(g) for g in groups if g]
