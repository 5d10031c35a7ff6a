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

Which attacks run in which view, and which is a view's headline, come from the attack registry
(:mod:`fedaudit.attacks.base`, through :mod:`fedaudit.auditor.attack`). FedMIA (``fedmia``, server view) also
scores every audited record under a fixed number of other replying clients' models, its null distribution
(:mod:`fedaudit.auditor.null`: a forward pass per record and null client, so the round stays linear).

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedaudit.auditor.attack import (
    audit_attacks, fit_folds, headline, job_attacks, null_attacks, spec, trained_attacks, view_attacks,
)
from fedaudit.auditor.executors import InlineExecutor
from fedaudit.auditor.records import AuditRecords, scenario_records
from fedaudit.auditor.runtime import materialize
from fedaudit.auditor.results import AGGREGATE_ONLY, headline_fields, light_metrics, summary_or_none
from fedaudit.auditor.sources import attribute_sources, calibrated_source_scores, source_inference
from fedaudit.auditor.state import SEP, AUDIT_DIR, audited_rounds, merge_round, save_round, stack_rounds
from fedaudit.config import THREAT_MODELS, Scenario
from fedaudit.rundir import read_jsonl, upsert_jsonl

log = logging.getLogger(__name__)

AGGREGATE = "aggregate"              # the job key of the model the server computed (secure aggregation)


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
        self.threat_models = list(a.threat_models)
        self.attacks, self.skipped_attacks = audit_attacks(a.attacks, a.reference_models)
        # secure aggregation: the server sees theta_prev and the sum only (AGGREGATE_ONLY)
        self.aggregate_only = bool(scenario.federation.secure_aggregation)
        self._set_views()
        self.seed = scenario.federation.seed
        self.keep_round_arrays = bool(a.keep_round_arrays)
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
                              layers=tuple(a.layers))
        member = records.member
        in_sample = np.zeros(len(records), dtype=bool)
        in_sample[records.population_sample] = True
        self.plan = ShardPlan(attacks=self._job_attacks(), fold=records.fold,
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

    def _set_views(self) -> None:
        """Each threat model's attacks and headline (the best-ranked attack in the registry that runs there)."""
        self.view_attacks = {tm: view_attacks(self.attacks, tm) for tm in THREAT_MODELS}
        if self.aggregate_only:      # the server's view is the participant's attack, on the sum it computed
            self.view_attacks["server"] = self.view_attacks["participant"]
        self.headlines = {tm: headline(v) for tm, v in self.view_attacks.items()}
        self.headline = self.headlines[self.threat_models[0] if self.threat_models else "server"]

    def _job_attacks(self) -> list:
        """The score attacks every shard job computes (those of any audited view)."""
        names = dict.fromkeys(a for tm in self.threat_models for a in self.view_attacks[tm])
        return job_attacks(list(names))

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
        rows_of, null_of, null = {}, {}, None
        if server:
            rows_of = rows_by_source(source, ids)
            if null_attacks(self.view_attacks["server"]):
                from fedaudit.attacks.fedmia import NULL_CLIENTS
                from fedaudit.auditor.null import null_clients, rows_by_client

                null = null_clients(source, ids, NULL_CLIENTS, self.seed, round_)
                null_of = rows_by_client(null, ids)
            for k in ids:
                jobs.append(Job(k, rows_of[k], source=True, null_rows=null_of[k][0] if null_of else None))
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
                out["server"] = self._server(round_, ids, rows_of, results, non_finite, arrays, timing,
                                             (null, null_of))
            else:
                reason = "no client replied" if not ids else "theta_prev is not finite"
                out["server"] = {"attack": self.headlines["server"], **headline_fields(None), "skipped": reason,
                                 "clients": []}
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
            self._set_views()
            self.plan.attacks = self._job_attacks()
            self.reference_attacks = []
        self._reference_data = None

    def _keep(self, round_: int) -> bool:
        """Whether this round's feature arrays are saved (always, unless keep_round_arrays is false and the
        aggregation's stacked attack will not read this round)."""
        return self.keep_round_arrays or round_ in self.stack_rounds

    def _fitted(self, tm, features, eligible, blocks=()) -> dict:
        """Cross-fitted scores of the view's trained attacks on record-level ``features`` (n, F), and on each
        ``(positions, rows)`` block; returns {attack: (record-level scores, [block scores])}."""
        r = self.records
        out = {}
        for name in trained_attacks(self.view_attacks[tm]):
            cols = spec(name).columns(self.feature_names)
            attack = fit_folds(features[:, cols], r.member, r.fold, r.known, eligible=eligible)
            out[name] = (attack.score(np.arange(len(r)), features[:, cols]),
                         [attack.score(pos, rows[..., cols]) for pos, rows in blocks])
        return out

    def _view_result(self, tm, record_scores: dict, eligible, per_client) -> dict:
        """The threat model's JSON: headline, every attack's summary, per-client headline metrics."""
        member = self.records.member
        m, n = member & eligible, ~member & eligible
        summaries = {a: summary_or_none(s[m], s[n]) for a, s in record_scores.items()}
        name = self.headlines[tm]
        head = summaries[name]
        h = record_scores[name]
        result = {"attack": name, **headline_fields(head),
                  "summary": head.to_dict() if head is not None else None,
                  "attacks": {a: (s.to_dict() if s is not None else None) for a, s in summaries.items()},
                  "records": {"members": int(np.sum(m & ~np.isnan(h))), "nonmembers": int(np.sum(n & ~np.isnan(h))),
                              "population_sample": int(self.records.population_sample.size)},
                  "clients": []}
        owner = self.records.owner
        for k, (ms, ns) in per_client:
            result["clients"].append({"client": int(k), "records": int(np.sum(owner == k)), **light_metrics(ms, ns)})
        return result

    def _server(self, round_, ids, rows_of, results, non_finite, arrays, timing, nulls=(None, {})) -> dict:
        r = self.records
        n = len(r)
        audited = [k for k in ids if k in results and results[k].finite]
        head_name = self.headlines["server"]
        if not audited:
            return {"attack": head_name, **headline_fields(None), "skipped": "no client returned finite outputs",
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
            for name, (rec, blocks) in self._fitted("server", feats, None, _client_blocks(P, pop_feats)).items():
                scores[name] = rec
                pop_scores[name] = np.concatenate(blocks, axis=1).T.astype(np.float32)
            if null_attacks(self.view_attacks["server"]):
                null_phi = self._null_phi(nulls, results, audited, n)
                for name, (rec, pop) in self._null_scores(round_, feats, null_phi, pop_feats).items():
                    scores[name], pop_scores[name] = rec, pop
            h, ph = scores[head_name], pop_scores[head_name]
            member = r.member
            per_client = [(k, (h[member & (scored_by == k)], ph[j])) for j, k in enumerate(audited)]
            result = self._view_result("server", scores, np.ones(n, dtype=bool), per_client)
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
        for a, s in pop_scores.items():   # the rounds the stacked attack reads need every attack's (score-only runs)
            if self._keep(round_) or a == head_name:
                arrays[tm + "pop_score" + SEP + a] = s.astype(np.float16)
        if self._keep(round_):
            arrays[tm + "features"] = feats
            arrays[tm + "pop_features"] = pop_feats.astype(np.float16)   # loses nothing measurable
        return result

    def _null_phi(self, nulls, results, audited, n) -> np.ndarray:
        """(M, n) phi of every audited record under its null clients' models (NaN: no such client replied with
        finite outputs)."""
        null, null_of = nulls
        out = np.full((0 if null is None else null.shape[1], n), np.nan)
        for k in audited:
            rows, slots = null_of.get(k, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
            phi = results[k].null_phi
            if phi is not None and rows.size:
                out[slots, rows] = phi
        return out

    def _null_scores(self, round_, feats, null_phi, pop_feats) -> dict:
        """The ``null`` attacks (FedMIA) of the server view: record-level scores under each record's source
        against its null clients, and the population sample under each audited client against ``m`` other
        audited clients; one call per attack, so that both share the attack's pooled estimates."""
        from fedaudit.attacks.base import AttackInputs, run_score_attack
        from fedaudit.attacks.fedmia import NULL_CLIENTS
        from fedaudit.auditor.null import null_positions, phi_logits

        phi_col = self.feature_names.index("phi")
        target = feats[:, phi_col].astype(np.float64)
        Ka, P = pop_feats.shape[0], pop_feats.shape[1]
        pop_phi = pop_feats[:, :, phi_col].astype(np.float64)                    # (clients, P)
        width = max(null_phi.shape[0], min(NULL_CLIENTS, Ka - 1))
        null_rec = np.full((width, null_phi.shape[1]), np.nan)
        null_rec[:null_phi.shape[0]] = null_phi
        pos = null_positions(Ka, P, NULL_CLIENTS, self.seed, round_)               # (clients, P, m)
        null_pop = np.full((width, Ka * P), np.nan)
        if pos.shape[2]:
            null_pop[:pos.shape[2]] = np.moveaxis(pop_phi[pos, np.arange(P)[None, :, None]], 2, 0).reshape(-1, Ka * P)
        phi_all = np.r_[target, pop_phi.ravel()]
        null_all = np.c_[null_rec, null_pop]
        ok = np.isfinite(phi_all) & np.isfinite(null_all).any(axis=0)
        out = {}
        for name in null_attacks(self.view_attacks["server"]):
            s = np.full(phi_all.size, np.nan)
            if ok.any():
                logits, labels = phi_logits(phi_all[ok])
                s[ok] = run_score_attack(name, AttackInputs(logits, labels, null_phi=null_all[:, ok]))
            out[name] = (s[:target.size], s[target.size:].reshape(Ka, P).astype(np.float32))
        return out

    def _participant(self, round_, new, res, ids, record, arrays, timing, tm: str = "participant") -> dict:
        """The attack on one global model (``tm``: the view whose arrays these are; under secure aggregation the
        server's aggregate-only attack is this one, on the sum it computed)."""
        r = self.records
        head_name = self.headlines[tm]
        if new is None:
            return {"attack": head_name, **headline_fields(None), "skipped": "no global model this round",
                    "clients": []}
        if res is None or not res.finite:
            reason = "the global model is not finite" if res is None or res.reason == "weights" else \
                "the global model's outputs are not finite"
            return {"attack": head_name, **headline_fields(None), "skipped": reason, "clients": []}
        trained = self._trained_clients(round_, ids, record)
        eligible = ~r.member | np.isin(r.owner, list(trained))
        with timing.phase("attacks"):
            mine = self.view_attacks[tm]
            scores = {a: s for a, s in res.scores.items() if a in mine}
            for name, (rec, _) in self._fitted(tm, res.features, eligible).items():
                scores[name] = rec
            h = scores[head_name]
            P = r.population_sample
            per_client = [(k, (h[r.owner == k], h[P])) for k in sorted(trained) if np.any(r.owner == k)]
            result = self._view_result(tm, scores, eligible, per_client)
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


__all__ = ["AuditCore", "InlineExecutor", "Timing", "attribute_sources", "audit_attacks", "light_metrics",
           "source_inference", "summary_or_none"]
