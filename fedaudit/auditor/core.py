"""AuditCore: attack one round as the server and as a participant; write its results at once.

Plain Python (the Ray actor in :mod:`fedaudit.auditor.actor` wraps it; tests call it directly). For round t
it receives theta_prev (the global weights sent out), each replying client's theta_k and the new global
theta_t, and for each threat model in ``[audit] threat_models``:

- ``server`` sees every theta_k and theta_prev. Its work per round is linear in the federation: every audited
  record is scored once, under the model of its source this round (a member under its owner's model when the
  owner replied; a population record under its pseudo-owner's, or a replying client drawn from the seed, see
  :meth:`AuditRecords.round_source`), and the population sample and the source sample are scored under every
  replying client's model. Client k's metrics compare k's members with the population sample under theta_k;
  source inference attributes each sampled member to the client whose model's update signals, calibrated per
  client on the population sample, point to it most (:func:`calibrated_source_scores`), and reports the naive
  lowest-loss attribution beside it;
- ``participant`` sees the global models: every record under theta_t, relative to theta_prev; a member counts
  once its owner has trained (with client sampling, the owners of some records may not have yet).

The signals and score attacks run as jobs (:mod:`fedaudit.auditor.shard`), one per model, handed to an executor:
in this process by default, as Ray tasks over the cluster's nodes in the actor. The fitted attacks (logistic
regressions on the features, :mod:`fedaudit.auditor.attack`) are cross-fitted here, on every shard's known
records. The attacks with reference models (``reference``, ``lira*``, ``rmia*``, with ``[audit]
reference_models >= 2``) train their reference models (or load them from the cache) once, at the first round
this instance audits (:mod:`fedaudit.auditor.references`). The round's arrays go to ``audit/round_NNNN.npz``
first (record-level arrays, the population sample under each client model in float16, the source sample's
losses: nothing shaped records x clients), then its metrics are merged into its line of ``rounds.jsonl``; a
round whose line already holds every threat model is never audited again, so a restarted auditor neither loses
nor double-counts a round. A client whose weights (or outputs) are not finite is flagged in
``non_finite_clients`` and left out of the attack; a failed client simply is not among the replies.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedaudit.auditor.attack import BLACKBOX, FITTED, NOT_PER_ROUND, REFERENCE, RUNNABLE, fit_folds, headline
from fedaudit.auditor.records import AuditRecords, scenario_records
from fedaudit.auditor.state import SEP, AUDIT_DIR, audited_rounds, merge_round, save_round, stack_rounds
from fedaudit.config import Scenario
from fedaudit.metrics import summarize
from fedaudit.rundir import read_jsonl, upsert_jsonl

log = logging.getLogger(__name__)

AGGREGATE = "aggregate"              # the job key of the model the server computed (secure aggregation)
AGGREGATE_ONLY = "aggregate-only"    # the server view's "view" under secure aggregation


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


def summary_or_none(member_scores, nonmember_scores):
    """Metrics on the finite scores, or None when either side has none."""
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    m, n = m[~np.isnan(m)], n[~np.isnan(n)]
    if m.size == 0 or n.size == 0:
        return None
    return summarize(m, n)


def light_metrics(member_scores, nonmember_scores) -> dict:
    """AUC, TPR at 1% and 0.1% FPR and balanced accuracy, as :func:`fedaudit.metrics.summarize` computes them
    (same thresholds, NaN where an FPR is below 1 / non-members) but without intervals: per-client metrics
    of every round need only these four, and the intervals cost most of a summary."""
    import math

    from fedaudit.metrics import _auc_from_counts, roc_counts

    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    m, n = m[~np.isnan(m)], n[~np.isnan(n)]
    if m.size == 0 or n.size == 0:
        return headline_fields(None)
    c = roc_counts(m, n)
    out = {"auc": _auc_from_counts(c)}
    for name, target in (("tpr_at_1pct", 0.01), ("tpr_at_0_1pct", 0.001)):
        allowed = math.floor(target * c.n_nonmembers + 1e-9)
        out[name] = math.nan if allowed < 1 else \
            float(c.tpr[int(np.searchsorted(c.fp, allowed, side="right")) - 1])
    out["accuracy"] = float(np.max((c.tpr + 1.0 - c.fpr) / 2.0))
    return out


def headline_fields(summary) -> dict:
    keys = ("auc", "tpr_at_1pct", "tpr_at_0_1pct", "accuracy")
    if summary is None:
        return {k: None for k in keys}
    return {k: getattr(summary, k) for k in keys}


def audit_attacks(configured, reference_models: int = 0) -> tuple[list, dict]:
    """(attacks the per-round auditor runs, {attack: why it is skipped}).

    The attacks with reference models run when ``reference_models >= 2`` (see
    :mod:`fedaudit.auditor.references`)."""
    from fedaudit.auditor.references import MIN_MODELS

    ok = RUNNABLE + (REFERENCE if int(reference_models) >= MIN_MODELS else ())
    run = [a for a in configured if a in ok]
    skipped = {a: NOT_PER_ROUND for a in configured if a not in ok}
    if not run:
        run = ["loss"]
    return run, skipped


def describe_scenario_model(scenario: Scenario, input_shape, num_classes: int):
    """The scenario model's :class:`~fedaudit.auditor.dense.DenseStack` (its signals then need no TensorFlow in
    the auditor), or None. Builds the Keras model: call it where TensorFlow is loaded anyway (the driver)."""
    from fedaudit.auditor.dense import describe_dense
    from fedaudit.models import build_model

    model = build_model(scenario.model.name, tuple(input_shape), int(num_classes), seed=scenario.federation.seed,
                        **dict(scenario.model.options))
    return describe_dense(model, scenario.audit.gradients, scenario.audit.layers)


class InlineExecutor:
    """Runs a round's jobs as one shard in this process (tests, and the auditor on a one-node Ray)."""

    def __call__(self, spec, plan, data, previous, jobs, weights, references) -> list:
        from fedaudit.auditor.shard import run_shard

        return [run_shard(spec, plan, data, previous, jobs, [materialize(w) for w in weights], references)]


def materialize(value):
    """A value, or the value behind a Ray ObjectRef."""
    if value is not None and type(value).__name__ == "ObjectRef":
        import ray

        return ray.get(value)
    return value


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
        self.threat_models = list(a.threat_models)
        self.attacks, self.skipped_attacks = audit_attacks(a.attacks, a.reference_models)
        self.headline = headline(self.attacks)
        self.seed = scenario.federation.seed
        self.keep_round_arrays = bool(a.keep_round_arrays)
        # secure aggregation: the server sees theta_prev and the sum only (AGGREGATE_ONLY)
        self.aggregate_only = bool(scenario.federation.secure_aggregation)
        self.stack_rounds = set(stack_rounds(list(range(1, scenario.federation.rounds + 1))))
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        num_classes = int(num_classes if num_classes is not None else int(np.max(y)) + 1)
        self.num_classes = num_classes
        # reference models: trained (or loaded from the cache) at the first round this instance audits
        self.reference_attacks = [n for n in self.attacks if n in REFERENCE]
        self.references = None
        self._reference_data = (x, y) if self.reference_attacks else None
        input_shape = tuple(input_shape or x.shape[1:])
        if isinstance(dense, str) and dense == "auto":
            dense = describe_scenario_model(scenario, input_shape, num_classes)
        self.spec = ProbeSpec(scenario.model.name, dict(scenario.model.options), input_shape, num_classes,
                              gradients=tuple(a.gradients), seed=self.seed, threads=int(threads), dense=dense,
                              layers=tuple(a.layers))
        member = records.member
        in_sample = np.zeros(len(records), dtype=bool)
        in_sample[records.population_sample] = True
        self.plan = ShardPlan(attacks=[n for n in self.attacks if n not in FITTED], fold=records.fold,
                              calibration=in_sample & records.known & ~member,
                              population_sample=records.population_sample, source_sample=records.source_sample)
        self.executor = executor or InlineExecutor()
        self.data = data if data is not None else (x, y)
        self.feature_names: list | None = None
        path = self.run_dir / AUDIT_DIR / "records.npz"
        if not path.exists():
            records.save(path)

    @classmethod
    def from_dataset(cls, run_dir, scenario: Scenario, x, y, owner, num_clients: int, **kwargs) -> "AuditCore":
        records = scenario_records(scenario, owner, y, num_clients)
        return cls(run_dir, scenario, records, np.asarray(x)[records.index], np.asarray(y)[records.index],
                   num_classes=int(np.max(y)) + 1, **kwargs)

    # ------------------------------------------------------------------------------------------------

    def done(self) -> set[int]:
        return audited_rounds(self.run_dir, self.threat_models)

    def observe(self, round_: int, previous, clients: dict, new, record: dict | None = None,
                aggregate=None) -> dict | None:
        """Audit one round; a no-op (None) if the round is already written. Returns the merged fields.

        ``clients``: {client id: weights (or an ObjectRef of them)} of the clients that replied;
        ``previous`` and ``new`` likewise (``new`` None when there is no global model this round).
        Under secure aggregation ``clients`` is empty (the server never had them), ``record["clients"]`` names
        the clients that took part, and the server's view is the aggregate-only attack: the participant's attack
        on the model the server computed, ``aggregate`` (the unmasked sum, before central DP noise) or ``new``.
        """
        from fedaudit.auditor.features import all_finite
        from fedaudit.auditor.shard import Job

        round_ = int(round_)
        if round_ in self.done():
            log.info("round %d already audited; skipping", round_)
            return None
        started, cpu = time.perf_counter(), time.process_time()
        timing = Timing()
        r = self.records
        out: dict = {}
        arrays: dict = {"round": np.int64(round_)}
        if self.reference_attacks and self.references is None:
            with timing.phase("references"):
                self._prepare_references()
        if self.references is not None:
            out["reference_models"] = self.references.info
        previous = materialize(previous)
        prev_ok = all_finite(previous)
        ids = sorted(int(k) for k in clients)
        jobs, weights = [], []
        source = r.round_source(ids, round_)
        server = "server" in self.threat_models and prev_ok and ids and not self.aggregate_only
        rows_of = {}
        if server:
            rows_of = rows_by_source(source, ids)
            for k in ids:
                jobs.append(Job(k, rows_of[k], source=True))
                weights.append(clients[k])
        participant = "participant" in self.threat_models and new is not None
        if participant:
            jobs.append(Job("global", np.arange(len(r))))
            weights.append(new)
        summed = aggregate if aggregate is not None else new
        if self.aggregate_only and "server" in self.threat_models and summed is not None and \
                (aggregate is not None or not participant):
            jobs.append(Job(AGGREGATE, np.arange(len(r))))
            weights.append(summed)
        shards = []
        if jobs:
            with timing.phase("signals"):
                shards = self.executor(self.spec, self.plan, self.data, previous if prev_ok else None, jobs,
                                       weights, self.references)
        results = {j.key: j for s in shards for j in s.jobs}
        if shards and self.feature_names is None:
            self.feature_names = list(shards[0].feature_names)
        arrays["feature_names"] = np.array(self.feature_names or [])
        non_finite = sorted({k for k in ids if k in results and not results[k].finite})
        if "server" in self.threat_models and self.aggregate_only:
            job = AGGREGATE if AGGREGATE in results else "global"
            out["server"] = {**self._participant(round_, summed, results.get(job), ids, record, arrays, timing,
                                                 tm="server"), "view": AGGREGATE_ONLY}
        elif "server" in self.threat_models:
            if server:
                out["server"] = self._server(round_, ids, rows_of, results, non_finite, arrays, timing)
            else:
                reason = "no client replied" if not ids else "theta_prev is not finite"
                out["server"] = {"attack": self.headline, **headline_fields(None), "skipped": reason, "clients": []}
        if "participant" in self.threat_models:
            out["participant"] = self._participant(round_, new, results.get("global"), ids, record, arrays,
                                                   timing)
        out["non_finite_clients"] = non_finite
        if self.skipped_attacks:
            out["skipped_attacks"] = self.skipped_attacks
        with timing.phase("io"):
            save_round(self.run_dir, round_, arrays)
        timing.seconds["total"] = time.perf_counter() - started
        # CPU seconds of the round: this process's, plus those of tasks that ran in other processes
        timing.seconds["cpu"] = time.process_time() - cpu + sum(s.cpu_seconds for s in shards if s.pid != os.getpid())
        upsert_jsonl(self.run_dir / AUDIT_DIR / "timing.jsonl",
                     {"round": round_, **{k: round(v, 4) for k, v in timing.seconds.items()},
                      "tasks": [{"node": s.node, "pid": s.pid, "jobs": len(s.jobs), "rows": s.rows,
                                 "seconds": round(s.seconds, 4), "max_rss_mb": round(s.max_rss_mb, 1)}
                                for s in shards]})
        out["audit_seconds"] = round(time.perf_counter() - started, 4)
        # the commit point: once the line holds every threat model, the round counts as audited
        return merge_round(self.run_dir, round_, {**(record or {}), **out})

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
            self.headline = headline(self.attacks)
            self.plan.attacks = [n for n in self.attacks if n not in FITTED]
            self.reference_attacks = []
        self._reference_data = None

    def _keep(self, round_: int) -> bool:
        """Whether this round's feature arrays are saved (always, unless keep_round_arrays is false and the
        aggregation's stacked attack will not read this round)."""
        return self.keep_round_arrays or round_ in self.stack_rounds

    def _fitted(self, features, eligible, blocks=()) -> dict:
        """Cross-fitted scores of the fitted attacks on record-level ``features`` (n, F), and on each
        ``(positions, rows)`` block; returns {attack: (record-level scores, [block scores])}."""
        r = self.records
        out = {}
        for name in (a for a in self.attacks if a in FITTED):
            cols = slice(None) if name == "whitebox" else np.arange(len(BLACKBOX))
            attack = fit_folds(features[:, cols], r.member, r.fold, r.known, eligible=eligible)
            out[name] = (attack.score(np.arange(len(r)), features[:, cols]),
                         [attack.score(pos, rows[..., cols]) for pos, rows in blocks])
        return out

    def _view_result(self, record_scores: dict, eligible, per_client) -> dict:
        """The threat model's JSON: headline, every attack's summary, per-client headline metrics."""
        member = self.records.member
        m, n = member & eligible, ~member & eligible
        summaries = {a: summary_or_none(s[m], s[n]) for a, s in record_scores.items()}
        head = summaries[self.headline]
        h = record_scores[self.headline]
        result = {"attack": self.headline, **headline_fields(head),
                  "summary": head.to_dict() if head is not None else None,
                  "attacks": {a: (s.to_dict() if s is not None else None) for a, s in summaries.items()},
                  "records": {"members": int(np.sum(m & ~np.isnan(h))), "nonmembers": int(np.sum(n & ~np.isnan(h))),
                              "population_sample": int(self.records.population_sample.size)},
                  "clients": []}
        owner = self.records.owner
        for k, (ms, ns) in per_client:
            result["clients"].append({"client": int(k), "records": int(np.sum(owner == k)), **light_metrics(ms, ns)})
        return result

    def _server(self, round_, ids, rows_of, results, non_finite, arrays, timing) -> dict:
        r = self.records
        n = len(r)
        audited = [k for k in ids if k in results and results[k].finite]
        if not audited:
            return {"attack": self.headline, **headline_fields(None), "skipped": "no client returned finite outputs",
                    "clients": []}
        F = len(self.feature_names)
        P, S = r.population_sample, r.source_sample
        with timing.phase("attacks"):
            feats = np.full((n, F), np.nan, dtype=np.float32)
            loss = np.full(n, np.nan)
            correct = np.zeros(n, dtype=bool)
            scored_by = np.full(n, -1, dtype=np.int64)
            scores = {a: np.full(n, np.nan) for a in self.plan.attacks}
            pop_feats = np.empty((len(audited), P.size, F), dtype=np.float32)
            pop_scores = {a: np.empty((len(audited), P.size), dtype=np.float32) for a in self.plan.attacks}
            source_loss = np.empty((len(audited), S.size), dtype=np.float32)
            source_feats = np.empty((len(audited), S.size, F), dtype=np.float32)
            for j, k in enumerate(audited):
                res, rows = results[k], rows_of[k]
                feats[rows], loss[rows], correct[rows], scored_by[rows] = res.features, res.loss, res.correct, k
                pop_feats[j] = res.pop_features
                source_loss[j] = res.source_loss
                source_feats[j] = res.source_features
                for a in self.plan.attacks:
                    scores[a][rows] = res.scores[a]
                    pop_scores[a][j] = res.pop_scores[a]
            for name, (rec, blocks) in self._fitted(feats, None, _client_blocks(P, pop_feats)).items():
                scores[name] = rec
                pop_scores[name] = np.concatenate(blocks, axis=1).T.astype(np.float32)
            h, ph = scores[self.headline], pop_scores[self.headline]
            member = r.member
            per_client = [(k, (h[member & (scored_by == k)], ph[j])) for j, k in enumerate(audited)]
            result = self._view_result(scores, np.ones(n, dtype=bool), per_client)
            result["clients_audited"] = audited
            col = {k: j for j, k in enumerate(audited)}
            owner_col = np.array([col.get(int(k), -1) for k in r.owner[S]], dtype=np.int64)
            source_score = calibrated_source_scores(r, owner_col, pop_feats, source_feats, self.seed + round_).T
            result["source_inference"] = attribute_sources(source_loss.T, r.owner[S], audited, source_score.T)
        tm = "server" + SEP
        arrays[tm + "clients"] = np.array(audited, dtype=np.int64)
        arrays[tm + "scored_by"] = scored_by
        arrays[tm + "loss"] = loss.astype(np.float32)
        arrays[tm + "correct"] = correct
        arrays[tm + "source_loss"] = source_loss
        arrays[tm + "source_score"] = source_score.astype(np.float32)
        for a, s in scores.items():
            arrays[tm + "score" + SEP + a] = s.astype(np.float32)
        for a, s in pop_scores.items():
            if self.keep_round_arrays or a == self.headline:
                arrays[tm + "pop_score" + SEP + a] = s.astype(np.float16)
        if self._keep(round_):
            arrays[tm + "features"] = feats
            arrays[tm + "pop_features"] = pop_feats.astype(np.float16)   # loses nothing measurable
        return result

    def _participant(self, round_, new, res, ids, record, arrays, timing, tm: str = "participant") -> dict:
        """The attack on one global model (``tm``: the view whose arrays these are; under secure aggregation the
        server's aggregate-only attack is this one, on the sum it computed)."""
        r = self.records
        if new is None:
            return {"attack": self.headline, **headline_fields(None), "skipped": "no global model this round",
                    "clients": []}
        if res is None or not res.finite:
            reason = "the global model is not finite" if res is None or res.reason == "weights" else \
                "the global model's outputs are not finite"
            return {"attack": self.headline, **headline_fields(None), "skipped": reason, "clients": []}
        trained = self._trained_clients(round_, ids, record)
        eligible = ~r.member | np.isin(r.owner, list(trained))
        with timing.phase("attacks"):
            scores = dict(res.scores)
            for name, (rec, _) in self._fitted(res.features, eligible).items():
                scores[name] = rec
            h = scores[self.headline]
            P = r.population_sample
            per_client = [(k, (h[r.owner == k], h[P])) for k in sorted(trained) if np.any(r.owner == k)]
            result = self._view_result(scores, eligible, per_client)
        tm = tm + SEP
        arrays[tm + "loss"] = res.loss.astype(np.float32)
        arrays[tm + "correct"] = res.correct
        arrays[tm + "eligible"] = eligible
        for a, s in scores.items():
            arrays[tm + "score" + SEP + a] = s.astype(np.float32)
        if self._keep(round_):
            arrays[tm + "features"] = res.features
        return result

    def _trained_clients(self, round_: int, ids, record) -> set:
        """The clients that trained in this round or an earlier one (whose records the global model has seen)."""
        trained = set(int(k) for k in ids) | set(int(k) for k in (record or {}).get("clients", []))
        for row in read_jsonl(self.run_dir / "rounds.jsonl"):
            if row.get("round") is not None and int(row["round"]) <= round_:
                trained.update(int(k) for k in row.get("clients", []) or [])
                trained.update(int(c["client"]) for c in (row.get("server") or {}).get("clients", []) or [])
        return trained


def rows_by_source(source: np.ndarray, clients) -> dict:
    """{client: positions of the records its model scores this round}, from one sort (not a scan per client)."""
    order = np.argsort(source, kind="stable")
    keys = source[order]
    out = {}
    for k in clients:
        lo, hi = np.searchsorted(keys, k, side="left"), np.searchsorted(keys, k, side="right")
        out[int(k)] = order[lo:hi]
    return out


def _client_blocks(positions: np.ndarray, pop_feats: np.ndarray, chunk: int = 128) -> list:
    """(positions, rows) blocks of the population sample under chunks of clients: rows (P, clients, F)."""
    return [(positions, np.swapaxes(pop_feats[start:start + chunk], 0, 1))
            for start in range(0, pop_feats.shape[0], chunk)]


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


LOWEST_LOSS = "lowest loss: the client whose model gives the record the lowest loss (Hu et al. 2021)"
CALIBRATED = ("calibrated: the client under whose model a cross-fitted logistic regression on the record's features, "
              "standardised per client on the population sample, scores it highest")


def calibrated_source_scores(records: AuditRecords, owner_col: np.ndarray, pop_features: np.ndarray,
                             source_features: np.ndarray, seed: int = 0, negatives: int = 8) -> np.ndarray:
    """(S, K) source scores of the source sample under each of K client models (higher: more likely the source).

    Every feature of a record under client k's model (loss, loss drop from theta_prev, gradient norms, the
    gradient-update cosine of every layer, ...) is standardised by the population sample's values under the same
    model (``pop_features`` (K, P, F)): clients differ in how far their models moved. A logistic regression on
    these rows, fitted on the known members of the source sample (their row under their own client's model
    against their rows under up to ``negatives`` other clients'), scores every row; it is cross-fitted like the
    membership attacks (a record of fold f is scored by the regression fitted outside fold f), so no record is
    scored with its own owner known. ``owner_col`` (S,): the column of each record's owner (-1: its owner is not
    among the K). A fold without known members to fit on falls back to the standardised log loss. Work: linear in
    (S + P) x K."""
    from fedaudit.auditor.attack import Logistic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN columns (no theta_prev): left NaN
        mu, sd = np.nanmean(pop_features, axis=1), np.nanstd(pop_features, axis=1)         # (K, F)
    sd = np.where(sd > 1e-12, sd, np.nan)
    z = (np.swapaxes(source_features, 0, 1).astype(np.float64) - mu[None]) / sd[None]     # (S, K, F)
    z = np.clip(np.where(np.isfinite(z), z, np.nan), -1e3, 1e3)
    usable = ~np.isnan(z).all(axis=(0, 1))
    z = z[:, :, usable]
    S, K = z.shape[:2]
    names = np.arange(usable.size)[usable]
    fallback = -z[:, :, list(names).index(1)] if 1 in names else np.zeros((S, K))      # column 1: log_loss
    fold = records.fold[records.source_sample]
    known = records.known[records.source_sample] & (owner_col >= 0)
    rng = np.random.default_rng([int(seed), 0x50])
    out = np.full((S, K), np.nan)
    for f in np.unique(fold):
        target = fold == f
        train = np.flatnonzero(known & ~target)
        if not train.size or K < 2 or not z.shape[2]:
            out[target] = fallback[target]
            continue
        rows, labels = [], []
        for i in train:
            others = np.delete(np.arange(K), owner_col[i])
            pick = rng.choice(others, size=min(negatives, others.size), replace=False)
            rows += [z[i, owner_col[i]], *z[i, pick]]
            labels += [1.0] + [0.0] * pick.size
        clf = Logistic().fit(np.asarray(rows), np.asarray(labels))
        out[target] = clf.decision_function(z[target].reshape(-1, z.shape[2])).reshape(-1, K)
    return out


def attribution_accuracy(correct: np.ndarray) -> dict:
    """Accuracy of ``correct`` (bool per attributed record) with its 95% Clopper-Pearson interval."""
    from fedaudit.metrics import clopper_pearson

    n, k = int(correct.size), int(np.sum(correct))
    if not n:
        return {"accuracy": None, "ci": [None, None]}
    return {"accuracy": k / n, "ci": [float(v) for v in clopper_pearson(k, n)]}


def attribute_sources(loss: np.ndarray, owner: np.ndarray, clients, score: np.ndarray | None = None) -> dict:
    """Attribute every member whose owner replied to a client.

    ``loss``: (n, len(clients)), column j the losses under ``clients[j]``'s model (NaN: no score); ``score``
    (same shape, higher: more likely the source), e.g. :func:`calibrated_source_scores`. The attribution is the
    highest score when ``score`` is given, else the lowest loss; the lowest-loss attribution is always reported
    as ``lowest_loss``, the naive baseline. Returns accuracy with its 95% interval, chance (1/replying clients)
    and the number of members attributed.
    """
    clients = np.asarray(list(clients), dtype=np.int64)
    sel = (owner >= 0) & np.isin(owner, clients)
    chance = (1.0 / clients.size) if clients.size else None
    if not sel.any() or not clients.size:
        out = {"accuracy": None, "ci": [None, None], "chance": chance, "records": 0}
        return {**out, "method": LOWEST_LOSS} if score is None else \
            {**out, "method": CALIBRATED, "lowest_loss": {"accuracy": None, "ci": [None, None]}}
    l = np.where(np.isnan(loss[sel]), np.inf, loss[sel])
    naive = attribution_accuracy(clients[np.argmin(l, axis=1)] == owner[sel])
    if score is None:
        return {**naive, "chance": chance, "records": int(sel.sum()), "method": LOWEST_LOSS}
    s = np.where(np.isnan(score[sel]), -np.inf, score[sel])
    return {**attribution_accuracy(clients[np.argmax(s, axis=1)] == owner[sel]), "chance": chance,
            "records": int(sel.sum()), "method": CALIBRATED, "lowest_loss": naive}


def source_inference(loss: np.ndarray, owner: np.ndarray, clients, score: np.ndarray | None = None) -> dict:
    """:func:`attribute_sources` for ``loss`` (n, K) (and ``score``) whose column k is client k (NaN where it did
    not reply)."""
    clients = list(clients)
    return attribute_sources(loss[:, clients] if clients else loss[:, :0], owner, clients,
                             None if score is None else score[:, clients])


__all__ = ["AuditCore", "InlineExecutor", "Timing", "attribute_sources", "attribution_accuracy", "audit_attacks",
           "calibrated_source_scores", "light_metrics", "source_inference", "summary_or_none"]
