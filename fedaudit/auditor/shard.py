"""One shard of a round's audit: the signals and score attacks of a few models, in any process.

A round's work is a list of :class:`Job`: one per audited client model under the ``server`` threat model
(rows: the records that model scores at the record level, i.e. its owner's members and the population records
it stands for this round), and one for the global model under ``participant`` (rows: every audited record).
Every job also scores the population sample (the non-member side of each client's metrics, the calibration
records of attack P and RMIA's comparison records); a server job also computes the features of the source sample
(for source inference: the membership attack on them under every client's model, calibrated per client on the
population sample). :func:`run_shard` runs a list of jobs where it is called: in the
auditor actor, or in a Ray task on any node (:func:`shard_task`), so that a cluster audits a round in
parallel. Work per job is linear in its rows plus the two samples; nothing is shaped records x clients.

The signals of theta_prev (the base of the update features) are computed once per shard, on the union of its
jobs' rows and the two samples. The fitted attacks (logistic regressions on the features) need known records from every job, so
the auditor fits them after the shards return (:mod:`fedaudit.auditor.core`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ProbeSpec:
    """What a process needs to build the audited model (cached per process)."""

    model_name: str
    model_options: dict
    input_shape: tuple
    num_classes: int
    gradients: tuple = ()
    seed: int = 0
    threads: int = 1
    dense: object = None          # a DenseStack: the model's signals in NumPy (fedaudit.auditor.dense), no TF
    layers: tuple = ()            # [audit] layers: the layers whose outputs give activation features
    source_gradients: str = "dense"   # [audit] source_gradients: the source sample's gradient norms

    def key(self) -> tuple:
        return (self.model_name, repr(sorted(self.model_options.items())), tuple(self.input_shape),
                int(self.num_classes), tuple(self.gradients), int(self.seed), self.dense, tuple(self.layers),
                self.source_gradients)


@dataclass
class ShardPlan:
    """The round-independent facts every shard needs (plain arrays, shipped once per round)."""

    attacks: list                 # score attacks computed per job (threshold, population, reference)
    fold: np.ndarray              # (n,) cross-fitting fold of every audited record
    calibration: np.ndarray       # (n,) bool: known non-members of the population sample (attack P)
    population_sample: np.ndarray  # (P,) positions of the population sample
    source_sample: np.ndarray     # (S,) positions of the source sample


@dataclass
class Job:
    key: object                   # client id (server) or "global" (participant)
    rows: np.ndarray              # positions of the records this model scores at the record level
    source: bool = False          # also the loss of the source sample
    null_rows: np.ndarray | None = None   # records whose FedMIA null includes this model (phi, a forward pass)


@dataclass
class JobResult:
    key: object
    finite: bool
    reason: str = ""                         # why not finite: "weights" or "outputs"
    features: np.ndarray | None = None       # (m, F) float32 on the job's rows
    loss: np.ndarray | None = None           # (m,)
    correct: np.ndarray | None = None        # (m,) bool
    scores: dict = field(default_factory=dict)       # attack -> (m,)
    pop_features: np.ndarray | None = None   # (P, F) float32 on the population sample
    pop_scores: dict = field(default_factory=dict)   # attack -> (P,) float32
    source_loss: np.ndarray | None = None    # (S,) float32
    source_features: np.ndarray | None = None   # (S, F) float32 on the source sample
    null_phi: np.ndarray | None = None       # (len(null_rows),) phi of the job's null rows under its model


@dataclass
class ShardResult:
    jobs: list
    node: str
    pid: int
    seconds: float
    rows: int
    feature_names: list = field(default_factory=list)
    max_rss_mb: float = 0.0
    cpu_seconds: float = 0.0      # CPU time of this process (all threads) spent on the shard


_PROBES: dict = {}
MODELS_PER_PASS = 64    # models whose full views a shard holds at once (the rest of a round: condensed results)


def probe_for(spec: ProbeSpec):
    """The process's :class:`~fedaudit.auditor.features.ModelProbe` for ``spec`` (built once per process)."""
    probe = _PROBES.get(spec.key())
    if probe is None and spec.dense is not None:
        from fedaudit.auditor.dense import DenseProbe

        _limit_blas(spec.threads)
        probe = DenseProbe(spec.dense)
    elif probe is None:
        from fedaudit.auditor.runtime import configure_tensorflow
        from fedaudit.auditor.features import ModelProbe

        configure_tensorflow(spec.threads)
        probe = ModelProbe(spec.model_name, spec.model_options, spec.input_shape, spec.num_classes,
                           gradients=spec.gradients, seed=spec.seed, layers=spec.layers,
                           source_gradients=spec.source_gradients)
    if spec.key() not in _PROBES:
        _PROBES.clear()
        _PROBES[spec.key()] = probe
    return probe


def warm_probe(spec: ProbeSpec, x, y) -> None:
    """Build this process's probe for ``spec`` and trace its TensorFlow steps (the batched views of own rows, the
    population and the source samples, theta_prev's base signals, forward losses) on two of the records ``x``,
    ``y``, so that the first round does not pay them. A Dense stack's NumPy probe has nothing to trace."""
    probe = probe_for(spec)
    if spec.dense is not None:
        return
    w = probe.model.get_weights()
    x, y = np.asarray(x[:2], dtype=np.float32), np.asarray(y[:2], dtype=np.int64)
    base = probe.base(w, x, y)
    probe.views([(w, x[:1], y[:1], base.take(np.arange(1)), True), (w, x[:1], y[:1], None, False)], w,
                (x, y, base), (x, y, base))
    probe.losses(w, x, y)


_BLAS_LIMITS: list = []


def _limit_blas(threads: int) -> None:
    """Bound NumPy's BLAS threads in this process (the auditor shares the CPUs with the clients)."""
    if _BLAS_LIMITS:
        return
    try:
        from threadpoolctl import threadpool_limits

        _BLAS_LIMITS.append(threadpool_limits(max(1, int(threads)), user_api="blas"))
    except ImportError:
        _BLAS_LIMITS.append(None)


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        pass
    return "local"


def run_shard(spec: ProbeSpec, plan: ShardPlan, data, previous, jobs: list, weights: list,
              references=None) -> ShardResult:
    """Signals and score attacks of ``jobs`` (``weights[i]`` is job i's model) on the audited records ``data``.

    ``previous``: theta_prev, or None when it is not finite (the update features are then NaN).
    """
    from fedaudit.auditor.runtime import max_rss_mb
    from fedaudit.auditor.features import all_finite

    started, cpu = time.perf_counter(), time.process_time()
    x, y = data
    probe = probe_for(spec)
    pop, src = plan.population_sample, plan.source_sample
    sources = any(j.source for j in jobs)
    union = np.unique(np.concatenate([j.rows for j in jobs] + [pop] + ([src] if sources else []))) if jobs else pop
    base = probe.base(previous, x[union], y[union]) if previous is not None else None
    finite = [i for i, w in enumerate(weights) if all_finite(w)]
    pbase = base.take(np.searchsorted(union, pop)) if base is not None else None
    sbase = base.take(np.searchsorted(union, src)) if base is not None and sources else None
    done: dict = {}
    for start in range(0, len(finite), MODELS_PER_PASS):     # a pass's views are dropped once condensed
        part = finite[start:start + MODELS_PER_PASS]
        items = [(weights[i], x[jobs[i].rows], y[jobs[i].rows],
                  base.take(np.searchsorted(union, jobs[i].rows)) if base is not None else None, jobs[i].source)
                 for i in part]
        views = probe.views(items, previous, (x[pop], y[pop], pbase), (x[src], y[src], sbase))
        for i, (v, sv) in zip(part, views):
            done[i] = _job_result(plan, probe, jobs[i], weights[i], v, sv, x, y, references)
        del items, views
    out = [done.get(i) or JobResult(job.key, finite=False, reason="weights") for i, job in enumerate(jobs)]
    return ShardResult(jobs=out, node=_node_id(), pid=os.getpid(), seconds=time.perf_counter() - started,
                       rows=int(sum(j.rows.size + pop.size for j in jobs)), feature_names=list(probe.feature_names), max_rss_mb=max_rss_mb(),
                       cpu_seconds=time.process_time() - cpu)


def _job_result(plan: ShardPlan, probe, job: Job, weights, v, sv, x, y, references) -> JobResult:
    """One job's condensed result from its model's views (own rows then the population sample; the source
    sample): what the auditor keeps of a model, float32."""
    pop = plan.population_sample
    if not np.isfinite(v.logits).all():
        return JobResult(job.key, finite=False, reason="outputs")   # finite weights, outputs overflow
    rows = np.concatenate([job.rows, pop])
    m = job.rows.size
    scores = job_scores(plan, rows, v.logits, y[rows], v.loss, references, x=x)
    null_phi = None
    if job.null_rows is not None and job.null_rows.size:
        from fedaudit.auditor.null import phi_from_loss

        null_phi = phi_from_loss(probe.losses(weights, x[job.null_rows], y[job.null_rows])).astype(np.float32)
    return JobResult(job.key, finite=True, features=v.features[:m].copy(), loss=v.loss[:m].astype(np.float32),
                     correct=v.correct[:m].copy(), scores={a: s[:m].copy() for a, s in scores.items()},
                     pop_features=v.features[m:].copy(),
                     pop_scores={a: s[m:].astype(np.float32) for a, s in scores.items()},
                     source_loss=sv.loss.astype(np.float32) if sv is not None else None,
                     source_features=sv.features if sv is not None else None,
                     null_phi=null_phi)


def job_scores(plan: ShardPlan, rows: np.ndarray, logits: np.ndarray, labels: np.ndarray, loss: np.ndarray,
               references=None, x: np.ndarray | None = None) -> dict:
    """The score attacks of ``plan.attacks`` on one model's ``rows`` (the population sample among them), by what
    the registry says each needs: reference models (``references``), the population (cross-fitted by fold on
    the known non-members of the population sample), or the target's logits alone. ``x``: the audited records'
    inputs, for attacks that read the records' features."""
    from fedaudit.attacks.base import AttackInputs, attack_spec, run_score_attack

    scores = {}
    is_pop = np.zeros(rows.size, dtype=bool)
    is_pop[rows.size - plan.population_sample.size:] = True   # the population sample comes last
    for name in plan.attacks:
        s = attack_spec(name)
        features = x[rows].reshape(rows.size, -1) if x is not None and "features" in s.needs else None
        if s.uses_reference_models:
            if references is not None:
                scores[name] = references.scores_rows(name, logits, rows, is_pop)
        elif "population" in s.needs:
            scores[name] = population_rows(logits, labels, plan.fold[rows], plan.calibration[rows] & is_pop,
                                           name=name, features=features)
        elif name == "loss":
            scores[name] = -np.asarray(loss, dtype=np.float64)     # the loss the features already hold
        else:
            scores[name] = run_score_attack(name, AttackInputs(logits, labels, features=features))
    return scores


def population_rows(logits: np.ndarray, labels: np.ndarray, fold: np.ndarray, calibration: np.ndarray, *,
                    name: str = "population", features: np.ndarray | None = None) -> np.ndarray:
    """A population attack (P by default) cross-fitted on one model's rows: a row of fold f is scored against
    the calibration rows (known non-members) outside fold f (NaN where a fold's attack cannot be fitted)."""
    import logging

    from fedaudit.attacks.base import AttackInputs, run_score_attack
    from fedaudit.errors import AttackError

    out = np.full(len(labels), np.nan)
    for f in np.unique(fold):
        calib = calibration & (fold != f)
        target = fold == f
        if not calib.any() or not target.any():
            continue
        extra = {} if features is None else {"features": features[target], "population_features": features[calib]}
        inputs = AttackInputs(target_logits=logits[target], labels=labels[target], population_logits=logits[calib],
                              population_labels=labels[calib], **extra)
        try:
            out[target] = run_score_attack(name, inputs)
        except AttackError as exc:      # e.g. too few known non-members outside the fold: no score there
            logging.getLogger(__name__).warning("attack %s, fold %d: %s", name, int(f), exc)
    return out


def shard_task(spec: ProbeSpec, plan: ShardPlan, data, previous, jobs: list, references, *weights) -> ShardResult:
    """:func:`run_shard` as a Ray task (``data``, ``previous``, ``references`` and ``weights`` arrive resolved)."""
    from fedaudit.federation.runtime import quiet_environment

    quiet_environment()
    return run_shard(spec, plan, data, previous, jobs, list(weights), references)


__all__ = ["Job", "JobResult", "ProbeSpec", "ShardPlan", "ShardResult", "job_scores", "population_rows",
           "probe_for", "run_shard", "shard_task", "warm_probe"]
