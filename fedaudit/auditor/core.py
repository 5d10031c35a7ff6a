"""AuditCore: attack one round as each audited threat model; write its results at once.

Plain Python (the Ray actor in :mod:`fedaudit.auditor.actor` wraps it; tests call it directly). For round t
it receives theta_prev (the global weights sent out), each replying client's theta_k and the new global
theta_t. Each threat model in ``[audit] threat_models`` is a registered object (:mod:`fedaudit.threat_model`; the
built-in ``server`` and ``participant`` are in :mod:`fedaudit.auditor.views`): it names the models whose signals it
needs this round (jobs, one per model, shared between threat models), and turns their signals into its result.
This class holds what the threat models share: the records and folds, the attacks of each view and its headline
(from the attack registry, :mod:`fedaudit.attacks.base`, through :mod:`fedaudit.auditor.attack`), the cross-fitted
trained attacks (:meth:`fitted`), a view's JSON (:meth:`view_result`), the reference models, and the round's files.

The signals and score attacks run as jobs (:mod:`fedaudit.auditor.shard`), one per model, handed to an executor
(:mod:`fedaudit.auditor.executors`): in this process by default, as Ray tasks over the cluster's nodes in the
actor. The fitted attacks (logistic regressions on the features, :mod:`fedaudit.auditor.attack`) are cross-fitted
here, on every shard's known records. The attacks with reference models (``reference``, ``lira*``, ``rmia*``, with
``[audit] reference_models >= 2``) train their reference models (or load them from the cache) once, at the first
round this instance audits (:mod:`fedaudit.auditor.references`). The round's arrays go to ``audit/round_NNNN.npz``
first (keys from :func:`fedaudit.schema.round_key`: record-level arrays, the population sample under each client
model in float16, the source sample's losses: nothing shaped records x clients), then its results are merged into
its line of ``rounds.jsonl`` (:class:`fedaudit.schema.RoundLine`); a round whose line already holds every threat
model is never audited again, so a restarted auditor neither loses nor double-counts a round. A client whose
weights (or outputs) are not finite is flagged in ``non_finite_clients`` and left out of the attack; a failed
client simply is not among the replies.

Beside the membership attacks, the inferences beyond membership named in ``[audit] inferences``
(:mod:`fedaudit.inferences`: labels, reconstruction, attributes) run on the same round, on the executor (an actor
of the auditor's under Ray, so that the TensorFlow they need stays out of this process, or a thread of this process
when its own signals need TensorFlow anyway: :mod:`fedaudit.inferences.runner`), and their results go into the
round's line under ``inferences`` (an inference that fails records its error there). What every first round would
pay once (the inferences' model built and traced, the reference models, the TensorFlow probe's tracing) is done by
:meth:`AuditCore.warm`, which the actor calls while the clients train round 1.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedaudit.auditor.attack import (ROUND_C, audit_attacks, fit_folds, headline, job_attacks, ranked_scores, spec,
                                     trained_attacks, view_attacks)
from fedaudit.auditor.executors import InlineExecutor
from fedaudit.auditor.records import AuditRecords, scenario_records
from fedaudit.auditor.runtime import materialize
from fedaudit.auditor.results import headline_fields, light_metrics, low_fpr_choice, summary_or_none
from fedaudit.auditor.state import AUDIT_DIR, audited_rounds, merge_round, save_round, stack_rounds
from fedaudit.config import Scenario
from fedaudit.rundir import read_jsonl, upsert_jsonl
from fedaudit.schema import RoundLine, ViewResult
from fedaudit.threat_model import get_threat_model
from fedaudit.twins import audited_here

log = logging.getLogger(__name__)


@dataclass
class Timing:
    """Seconds spent per phase (signals, attacks, io) in one round."""

    seconds: dict = field(default_factory=lambda: {"signals": 0.0, "attacks": 0.0, "io": 0.0})

    @contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t


def describe_scenario_model(scenario: Scenario, input_shape, num_classes: int):
    """The scenario model's :class:`~fedaudit.auditor.dense.DenseStack` (its signals then need no TensorFlow in
    the auditor), or None. Builds the Keras model: call it where TensorFlow is loaded anyway (the driver)."""
    from fedaudit.auditor.dense import describe_dense
    from fedaudit.models import build_model

    model = build_model(scenario.model.name, tuple(input_shape), int(num_classes), seed=scenario.federation.seed,
                        **dict(scenario.model.options))
    return describe_dense(model, scenario.audit.gradients, scenario.audit.layers)


class AuditCore:
    """The adversary of one run. ``x``, ``y`` are the audited records, aligned with ``records``.

    ``executor(spec, plan, data, previous, jobs, weights, references)`` runs a round's jobs and returns their
    :class:`~fedaudit.auditor.shard.ShardResult` list; the default runs them here, the Ray actor fans them out
    as tasks over the cluster (:mod:`fedaudit.auditor.actor`). ``data`` is what the executor hands its shards
    (default ``(x, y)``; the actor passes the object-store ref).
    """

    def __init__(self, run_dir, scenario: Scenario, records: AuditRecords, x, y, *, input_shape=None,
                 num_classes: int | None = None, executor=None, data=None, threads: int = 1, dense="auto"):
        from fedaudit.auditor.shard import ProbeSpec, ShardPlan

        self.run_dir = Path(run_dir)
        self.scenario = scenario
        self.records = records
        a = scenario.audit
        self.threat_models = audited_here(scenario)     # a deviating adversary is audited in its own run
        self.attacks, self.skipped_attacks = audit_attacks(a.attacks, a.reference_models)
        # secure aggregation: the server sees theta_prev and the sum only (its threat model knows what that means)
        self.aggregate_only = bool(scenario.federation.secure_aggregation)
        self.views = {tm: get_threat_model(tm) for tm in self.threat_models}
        self._set_views()
        self.seed = scenario.federation.seed
        # under client sampling the stacked attack reads each record's own rounds, which may be any
        self.keep_round_arrays = bool(a.keep_round_arrays) or scenario.federation.fraction < 1
        self.stack_rounds = set(stack_rounds(list(range(1, scenario.federation.rounds + 1))))
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        num_classes = int(num_classes if num_classes is not None else int(np.max(y)) + 1)
        self.num_classes = num_classes
        # reference models: trained (or loaded from the cache) at the first round this instance audits
        self.reference_attacks = [n for n in self.attacks if spec(n).uses_reference_models]
        self.references = None
        self._reference_data = (x, y) if self.reference_attacks else None
        input_shape = tuple(input_shape or x.shape[1:])
        if isinstance(dense, str) and dense == "auto":
            dense = describe_scenario_model(scenario, input_shape, num_classes)
        self.spec = ProbeSpec(scenario.model.name, dict(scenario.model.options), input_shape, num_classes,
                              gradients=tuple(a.gradients), seed=self.seed, threads=int(threads), dense=dense,
                              layers=tuple(a.layers), source_gradients=a.source_gradients)
        member = records.member
        in_sample = np.zeros(len(records), dtype=bool)
        in_sample[records.population_sample] = True
        self.plan = ShardPlan(attacks=self._job_attacks(), fold=records.fold,
                              calibration=in_sample & records.known & ~member,
                              population_sample=records.population_sample, source_sample=records.source_sample)
        self.executor = executor or InlineExecutor()
        self.data = data if data is not None else (x, y)
        self.feature_names: list | None = None
        # the inferences beyond membership (fedaudit.inferences) and what they read of this auditor
        self.inferences = list(a.inferences) if a.enabled else []
        self._inference_inputs = None
        if self.inferences:
            from fedaudit.inferences.runner import InferenceInputs

            self._inference_inputs = InferenceInputs(
                scenario, records, self.data, num_classes, self.seed, input_shape,
                key=f"{self.run_dir.resolve()}:{input_shape}:{num_classes}", threads=int(threads))
        path = self.run_dir / AUDIT_DIR / "records.npz"
        if not path.exists():
            records.save(path)

    @classmethod
    def from_dataset(cls, run_dir, scenario: Scenario, x, y, owner, num_clients: int, **kwargs) -> "AuditCore":
        records = scenario_records(scenario, owner, y, num_clients)
        return cls(run_dir, scenario, records, np.asarray(x)[records.index], np.asarray(y)[records.index],
                   num_classes=int(np.max(y)) + 1, **kwargs)

    # ------------------------------------------------------------------------------------------------

    def _set_views(self) -> None:
        """Each threat model's attacks and headline (the best-ranked attack in the registry that runs there)."""
        self.view_attacks = {tm: view_attacks(self.attacks, self.views[tm].attack_view_for(self.aggregate_only))
                             for tm in self.views}
        self.headlines = {tm: headline(v) for tm, v in self.view_attacks.items()}
        self.headline = self.headlines[self.threat_models[0]] if self.threat_models else None

    def _job_attacks(self) -> list:
        """The score attacks every shard job computes (those of any audited view)."""
        names = dict.fromkeys(a for tm in self.threat_models for a in self.view_attacks[tm])
        return job_attacks(list(names))

    def warm(self) -> None:
        """The one-time work of a first round, done before it arrives (the actor calls this while the clients
        train round 1): the inferences' worker started (TensorFlow imported, the adversary's model built and
        traced; it runs on while this returns), the reference models trained or loaded, and the TensorFlow probe
        built and its steps traced."""
        from fedaudit.auditor.runtime import materialize
        from fedaudit.auditor.shard import warm_probe

        if self.inferences:
            self.executor.warm_inferences(self._inference_inputs)
        if self.reference_attacks and self.references is None:
            self._prepare_references()
        if self.spec.dense is None:
            x, y = materialize(self.data)
            warm_probe(self.spec, x, y)

    def done(self) -> set[int]:
        return audited_rounds(self.run_dir, self.threat_models)

    def observe(self, round_: int, previous, clients: dict, new, record: dict | None = None,
                aggregate=None) -> dict | None:
        """Audit one round; a no-op (None) if the round is already written. Returns the merged line of rounds.jsonl.

        ``clients``: {client id: weights (or an ObjectRef of them)} of the clients that replied;
        ``previous`` and ``new`` likewise (``new`` None when there is no global model this round).
        Under secure aggregation ``clients`` is empty (the server never had them), ``record["clients"]`` names
        the clients that took part, and ``aggregate`` is the unmasked sum (before central DP noise), if recorded.
        Each audited threat model (:mod:`fedaudit.threat_model`) names the models it needs, the jobs run once per
        model, and each threat model turns them into its result.
        """
        from fedaudit.auditor.features import all_finite
        from fedaudit.auditor.views import RoundContext

        round_ = int(round_)
        if round_ in self.done():
            log.info("round %d already audited; skipping", round_)
            return None
        started, cpu = time.perf_counter(), time.process_time()
        timing = Timing()
        out: dict = {}
        if self.reference_attacks and self.references is None:
            with timing.phase("references"):
                self._prepare_references()
        if self.references is not None:
            out["reference_models"] = self.references.info
        previous = materialize(previous)
        ids = sorted(int(k) for k in clients)
        ctx = RoundContext(round=round_, previous=previous if all_finite(previous) else None, clients=clients,
                           new=new, aggregate=aggregate, record=record, ids=ids,
                           source=self.records.round_source(ids, round_), secure_aggregation=self.aggregate_only,
                           timing=timing, arrays={"round": np.int64(round_)})
        jobs, weights = [], []
        for tm in self.threat_models:
            for job, w in self.views[tm].jobs(self, ctx):
                if all(j.key != job.key for j in jobs):       # a model is probed once for every view
                    jobs.append(job)
                    weights.append(w)
        shards = []
        if jobs:
            with timing.phase("signals"):
                shards = self.executor(self.spec, self.plan, self.data, ctx.previous, jobs, weights, self.references)
        ctx.results = {j.key: j for s in shards for j in s.jobs}
        if shards and self.feature_names is None:
            self.feature_names = list(shards[0].feature_names)
        ctx.arrays["feature_names"] = np.array(self.feature_names or [])
        ctx.non_finite = sorted({k for k in ids if k in ctx.results and not ctx.results[k].finite})
        waiting = self._start_inferences(ctx) if self.inferences else None    # they run beside the attacks
        for tm in self.threat_models:
            out[tm] = ViewResult.from_dict(self.views[tm].audit(self, ctx)).to_dict()
        out["non_finite_clients"] = ctx.non_finite
        inference_task = None
        if waiting is not None:
            with timing.phase("inferences"):
                out["inferences"], inference_task = self._finish_inferences(waiting)
        if self.skipped_attacks:
            out["skipped_attacks"] = self.skipped_attacks
        with timing.phase("io"):
            save_round(self.run_dir, round_, ctx.arrays)
        timing.seconds["total"] = time.perf_counter() - started
        # CPU seconds of the round: this process's, plus those of tasks that ran in other processes
        timing.seconds["cpu"] = time.process_time() - cpu + sum(s.cpu_seconds for s in shards if s.pid != os.getpid())
        if inference_task and inference_task["pid"] != os.getpid():
            timing.seconds["cpu"] += inference_task["cpu_seconds"]
        upsert_jsonl(self.run_dir / AUDIT_DIR / "timing.jsonl",
                     {"round": round_, **{k: round(v, 4) for k, v in timing.seconds.items()},
                      "tasks": [{"node": s.node, "pid": s.pid, "jobs": len(s.jobs), "rows": s.rows,
                                 "seconds": round(s.seconds, 4), "max_rss_mb": round(s.max_rss_mb, 1)}
                                for s in shards],
                      **({"inference_task": inference_task} if inference_task else {})})
        out["audit_seconds"] = round(time.perf_counter() - started, 4)
        # the commit point: once the line holds every threat model, the round counts as audited
        return merge_round(self.run_dir, round_, {**(record or {}), **out})

    def global_job(self, key, weights) -> tuple:
        """``(Job, weights)`` of a model that scores every audited record (a global model, or the sum)."""
        from fedaudit.auditor.shard import Job

        return Job(key, np.arange(len(self.records))), weights

    def _start_inferences(self, ctx):
        """Start the round's inferences beyond membership on the executor (under Ray, in the auditor's inference
        actor); returns the function that waits for them."""
        from fedaudit.inferences.base import get_inference
        from fedaudit.inferences.runner import InferenceRound

        trained = (self.trained_clients(ctx.round, ctx.ids, ctx.record)
                   if any(get_inference(n).needs_trained for n in self.inferences) else set())
        round_ctx = InferenceRound(round=ctx.round, previous=ctx.previous, clients=dict(ctx.clients), new=ctx.new,
                                   aggregate=ctx.aggregate, record=ctx.record, ids=list(ctx.ids),
                                   secure_aggregation=ctx.secure_aggregation, non_finite=list(ctx.non_finite),
                                   trained=trained)
        return self.executor.inferences(self._inference_inputs, round_ctx, self.inferences)

    def _finish_inferences(self, waiting) -> tuple[dict, dict | None]:
        """The inferences' results ({name: object}) and where and at what cost they ran; if they were lost (their
        actor died), each inference records that error and the round is kept."""
        try:
            done = waiting()
        except Exception as exc:  # noqa: BLE001 - the membership audit of the round is not lost with them
            log.exception("the inferences of this round failed")
            return {n: {"error": repr(exc)} for n in self.inferences}, None
        task = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in done.items() if k != "results"}
        return done["results"], task

    def finish(self) -> dict:
        from fedaudit.auditor.aggregate import aggregate_run

        return aggregate_run(self.run_dir)

    # ------------------------------------------------------------------------------------------------

    def _prepare_references(self) -> None:
        """Train or load the run's reference models; on failure, skip their attacks (with the reason)."""
        from fedaudit.auditor.references import cache_dir_for, is_online, train_auditor_references

        a = self.scenario.audit
        x, y = self._reference_data
        try:
            self.references = train_auditor_references(
                self.scenario, self.records.member, x, y, self.num_classes, a.reference_models,
                online=any(is_online(n) for n in self.reference_attacks), cache_dir=cache_dir_for(self.run_dir))
        except Exception as exc:  # noqa: BLE001 - the other attacks still run
            log.exception("reference models failed; skipping %s", self.reference_attacks)
            for n in self.reference_attacks:
                self.skipped_attacks[n] = f"reference models failed: {exc!r}"
            self.attacks = [n for n in self.attacks if n not in self.reference_attacks] or ["loss"]
            self._set_views()
            self.plan.attacks = self._job_attacks()
            self.reference_attacks = []
        self._reference_data = None

    def keep(self, round_: int) -> bool:
        """Whether this round's feature arrays are saved (always, unless keep_round_arrays is false, every client
        trains every round and the aggregation's stacked attack will not read this round)."""
        return self.keep_round_arrays or round_ in self.stack_rounds

    def fitted(self, tm, features, eligible, blocks=()) -> dict:
        """Cross-fitted scores of the view's trained attacks on record-level ``features`` (n, F), and on each
        ``(positions, rows)`` block; returns {attack: (record-level scores, [block scores])}."""
        r = self.records
        out = {}
        for name in trained_attacks(self.view_attacks[tm]):
            cols = spec(name).columns(self.feature_names)
            attack = fit_folds(features[:, cols], r.member, r.fold, r.known, c=ROUND_C, eligible=eligible)
            out[name] = (attack.score(np.arange(len(r)), features[:, cols]),
                         [attack.score(pos, rows[..., cols]) for pos, rows in blocks])
        return out

    def view_result(self, tm, record_scores: dict, eligible, per_client) -> dict:
        """The threat model's JSON: headline, every attack's summary, the attack reported at 1% FPR (chosen on the
        known records, its metrics on the others: :func:`fedaudit.auditor.results.low_fpr_choice`), per-client
        headline metrics."""
        member = self.records.member
        m, n = member & eligible, ~member & eligible
        summaries = {a: summary_or_none(s[m], s[n]) for a, s in record_scores.items()}
        name = self.headlines[tm]
        head = summaries[name]
        h = record_scores[name]
        low_name, unknown = low_fpr_choice(ranked_scores(record_scores, name), member, self.records.known, eligible)
        low = record_scores[low_name]
        low_summary = summary_or_none(low[member & unknown], low[~member & unknown])
        result = {"attack": name, **headline_fields(head),
                  "summary": head.to_dict() if head is not None else None,
                  "attacks": {a: (s.to_dict() if s is not None else None) for a, s in summaries.items()},
                  "low_fpr_attack": low_name, "low_fpr": low_summary.to_dict() if low_summary is not None else None,
                  "records": {"members": int(np.sum(m & ~np.isnan(h))), "nonmembers": int(np.sum(n & ~np.isnan(h))),
                              "population_sample": int(self.records.population_sample.size)},
                  "clients": []}
        held = self.records.client_sizes()
        for k, (ms, ns) in per_client:
            result["clients"].append({"client": int(k), "records": int(held[k]) if 0 <= k < held.size else 0,
                                      **light_metrics(ms, ns)})
        return result

    def trained_clients(self, round_: int, ids, record) -> set:
        """The clients that trained in this round or an earlier one (whose records the global model has seen)."""
        trained = set(int(k) for k in ids) | set(int(k) for k in (record or {}).get("clients", []))
        per_client = [tm for tm, v in self.views.items() if v.per_client_models]
        for row in read_jsonl(self.run_dir / "rounds.jsonl"):
            if row.get("round") is None or int(row["round"]) > round_:
                continue
            line = RoundLine.from_dict(row, view_names=per_client)
            trained.update(int(k) for k in line.clients or [])
            for tm in per_client:        # the clients whose own model a per-client view attacked
                trained.update(c.client for c in (line.view(tm).clients if line.view(tm) else []))
        return trained


def threshold_scores(name: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A threshold attack's scores from (n, C) logits, or (n, K, C) for K models (NaN rows: no model)."""
    from fedaudit.attacks.threshold import THRESHOLD_ATTACKS

    fn = THRESHOLD_ATTACKS[name]
    if logits.ndim == 2:
        return fn(logits, labels)
    out = np.full(logits.shape[:2], np.nan)
    for k in range(logits.shape[1]):
        if np.isfinite(logits[:, k]).all():
            out[:, k] = fn(logits[:, k], labels)
    return out


__all__ = ["AuditCore", "InlineExecutor", "Timing", "audit_attacks", "light_metrics", "summary_or_none",
           "threshold_scores"]
