"""The built-in threat models of the federated audit: the honest-but-curious server and a participant.

Each is a :class:`fedaudit.threat_model.ThreatModel` registered by name. The auditor's core
(:mod:`fedaudit.auditor.core`) calls, for every audited threat model and round, :meth:`jobs` (the models whose
signals the view needs: a job per model, shared between views by its key) and then :meth:`audit` (the view's
result, and its arrays for the aggregation). The round's context (:class:`RoundContext`) holds what the adversary
was handed that round.

- ``server`` sees theta_prev and every replying client's theta_k. Every audited record is scored once, under the
  model of its source this round (a member under its owner's model when the owner replied; a population record
  under its pseudo-owner's, or a replying client drawn from the seed, see
  :meth:`~fedaudit.auditor.records.AuditRecords.round_source`); the population sample and the source sample are
  scored under every replying client's model. Client k's metrics compare k's members with the population sample
  under theta_k; source inference attributes each sampled member to the client whose model's update signals,
  calibrated per client on the population sample, point to it most
  (:func:`~fedaudit.auditor.sources.calibrated_source_scores`), with the naive lowest-loss attribution beside it.
  FedMIA (``fedmia``) also scores every audited record under a fixed number of other replying clients' models,
  its null distribution (:mod:`fedaudit.auditor.null`). Under secure aggregation the server sees theta_prev and the
  sum only: its view is then the attack on the global model it computed (:func:`global_model_result`).
- ``participant`` sees the global models: every record under theta_t, relative to theta_prev; a member counts
  once its owner has trained (with client sampling, the owners of some records may not have yet).

NumPy only at import time (the signals run in the shards).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedaudit.auditor.attack import null_attacks
from fedaudit.auditor.results import AGGREGATE_ONLY, skipped_result
from fedaudit.auditor.sources import attribute_sources, calibrated_source_scores
from fedaudit.schema import round_key
from fedaudit.threat_model import ThreatModel, get_threat_model, register_threat_model

AGGREGATE = "aggregate"    # the job key of the model the server computed (secure aggregation)
GLOBAL = "global"          # the job key of the global model


@dataclass
class RoundContext:
    """What the adversary was handed in one round, and what the round's views share.

    ``previous``: theta_prev (None when it is not finite); ``clients``: {client id: weights} of the replying clients
    (empty under secure aggregation); ``new``: the global model (None when there is none this round);
    ``aggregate``: the unmasked sum under secure aggregation (before central DP noise), or None; ``record``: the
    driver's utility line; ``source``: each audited record's source client this round. ``results`` ({job key:
    :class:`~fedaudit.auditor.shard.JobResult`}) is filled between :meth:`ThreatModel.jobs` and
    :meth:`ThreatModel.audit`; ``arrays`` is what the round saves; ``state`` is each view's scratch space.
    """

    round: int
    previous: object
    clients: dict
    new: object
    aggregate: object
    record: dict | None
    ids: list
    source: np.ndarray
    secure_aggregation: bool
    timing: object
    arrays: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    non_finite: list = field(default_factory=list)
    state: dict = field(default_factory=dict)


def global_model_result(core, ctx: RoundContext, tm: str, model, res) -> dict:
    """The attack on one global model (the participant's; under secure aggregation the server's aggregate-only
    attack, on the sum it computed): every record, members once their owner has trained."""
    r = core.records
    head_name = core.headlines[tm]
    if model is None:
        return skipped_result(head_name, "no global model this round")
    if res is None or not res.finite:
        reason = "the global model is not finite" if res is None or res.reason == "weights" else \
            "the global model's outputs are not finite"
        return skipped_result(head_name, reason)
    trained = core.trained_clients(ctx.round, ctx.ids, ctx.record)
    trained_on = ~r.member | np.isin(r.owner, list(trained))     # a member counts once its owner has trained
    mask = get_threat_model(tm).scored_records(core)
    eligible = trained_on if mask is None else trained_on & mask
    with ctx.timing.phase("attacks"):
        mine = core.view_attacks[tm]
        scores = {a: s for a, s in res.scores.items() if a in mine}
        for name, (rec, _) in core.fitted(tm, res.features, trained_on).items():
            scores[name] = rec
        h = scores[head_name]
        P = r.population_sample if mask is None else r.population_sample[mask[r.population_sample]]
        rows_of = rows_by_source(r.owner, sorted(trained))
        mine = {k: rows[eligible[rows]] for k, rows in rows_of.items()}
        per_client = [(k, (h[mine[k]], h[P])) for k in sorted(trained) if mine[k].size]
        result = core.view_result(tm, scores, eligible, per_client)
    arrays = ctx.arrays
    arrays[round_key(tm, "loss")] = res.loss.astype(np.float32)
    arrays[round_key(tm, "correct")] = res.correct
    arrays[round_key(tm, "eligible")] = trained_on
    if mask is not None:
        arrays[round_key(tm, "scored")] = mask
    for a, s in scores.items():
        arrays[round_key(tm, "score", a)] = s.astype(np.float32)
    if core.keep(ctx.round):
        arrays[round_key(tm, "features")] = res.features
    return result


@register_threat_model
class Participant(ThreatModel):
    name = "participant"
    title = "Participant (another client)"
    description = "a client of the federation, who sees only the global model of each round"
    noun = "a participant (another client)"
    possessive = "a participant's"
    against = "Against a participant"
    color = "#1f618d"
    strength = 10
    per_client_models = False
    dp_covers = {"server": True, "client": True, "local": True}

    def jobs(self, core, ctx: RoundContext) -> list:
        return [core.global_job(GLOBAL, ctx.new)] if ctx.new is not None else []

    def audit(self, core, ctx: RoundContext) -> dict:
        return global_model_result(core, ctx, self.name, ctx.new, ctx.results.get(GLOBAL))


@register_threat_model
class Server(ThreatModel):
    name = "server"
    title = "Honest-but-curious server"
    description = "the aggregator, who sees every client's model update in every round"
    noun = "the honest-but-curious server"
    possessive = "the honest-but-curious server's"
    against = "Against the server"
    color = "#b03a2e"
    strength = 20
    per_client_models = True
    secure_aggregation_description = ("the aggregator under secure aggregation, who sees only the sum of the clients' "
                                      "updates (the global model) in every round, never one client's update")
    dp_covers = {"server": False, "client": False, "local": True}

    def attack_view_for(self, secure_aggregation: bool) -> str:
        # under secure aggregation the server's attack is the participant's, on the sum it computed
        return "participant" if secure_aggregation else self.name

    def jobs(self, core, ctx: RoundContext) -> list:
        if ctx.secure_aggregation:
            summed = ctx.aggregate if ctx.aggregate is not None else ctx.new
            if summed is None:
                return []
            # the sum the server computed, or (none recorded) the global model, a job shared with the participant
            return [core.global_job(AGGREGATE, summed) if ctx.aggregate is not None else core.global_job(GLOBAL, summed)]
        if ctx.previous is None or not ctx.ids:
            return []
        from fedaudit.auditor.shard import Job

        rows_of = rows_by_source(ctx.source, ctx.ids)
        null, null_of = None, {}
        if null_attacks(core.view_attacks[self.name]):
            from fedaudit.attacks.fedmia import NULL_CLIENTS
            from fedaudit.auditor.null import null_clients, rows_by_client

            null = null_clients(ctx.source, ctx.ids, NULL_CLIENTS, core.seed, ctx.round)
            null_of = rows_by_client(null, ctx.ids)
        ctx.state[self.name] = {"rows_of": rows_of, "nulls": (null, null_of)}
        return [(Job(k, rows_of[k], source=True, null_rows=null_of[k][0] if null_of else None), ctx.clients[k])
                for k in ctx.ids]

    def audit(self, core, ctx: RoundContext) -> dict:
        if ctx.secure_aggregation:
            job = AGGREGATE if AGGREGATE in ctx.results else GLOBAL
            summed = ctx.aggregate if ctx.aggregate is not None else ctx.new
            return {**global_model_result(core, ctx, self.name, summed, ctx.results.get(job)), "view": AGGREGATE_ONLY}
        state = ctx.state.get(self.name)
        if state is None:
            reason = "no client replied" if not ctx.ids else "theta_prev is not finite"
            return {**skipped_result(core.headlines[self.name], reason), "clients": []}
        return self._per_client(core, ctx, state["rows_of"], state["nulls"])

    # ------------------------------------------------------------------------------------------------

    def _per_client(self, core, ctx: RoundContext, rows_of, nulls) -> dict:
        r = core.records
        n = len(r)
        results = ctx.results
        audited = [k for k in ctx.ids if k in results and results[k].finite]
        head_name = core.headlines[self.name]
        if not audited:
            return skipped_result(head_name, "no client returned finite outputs")
        F = len(core.feature_names)
        P, S = r.population_sample, r.source_sample
        attacks = core.plan.attacks
        with ctx.timing.phase("attacks"):
            feats = np.full((n, F), np.nan, dtype=np.float32)
            loss = np.full(n, np.nan)
            correct = np.zeros(n, dtype=bool)
            scored_by = np.full(n, -1, dtype=np.int64)
            scores = {a: np.full(n, np.nan) for a in attacks}
            pop_feats = np.empty((len(audited), P.size, F), dtype=np.float32)
            pop_scores = {a: np.empty((len(audited), P.size), dtype=np.float32) for a in attacks}
            source_loss = np.empty((len(audited), S.size), dtype=np.float32)
            source_feats = np.empty((len(audited), S.size, F), dtype=np.float32)
            for j, k in enumerate(audited):
                res, rows = results[k], rows_of[k]
                feats[rows], loss[rows], correct[rows], scored_by[rows] = res.features, res.loss, res.correct, k
                pop_feats[j] = res.pop_features
                source_loss[j] = res.source_loss
                source_feats[j] = res.source_features
                for a in attacks:
                    scores[a][rows] = res.scores[a]
                    pop_scores[a][j] = res.pop_scores[a]
                res.pop_features = res.source_features = None     # held once, in the round's arrays
            mask = self.scored_records(core)
            for name, (rec, blocks) in core.fitted(self.name, feats, None, _client_blocks(P, pop_feats)).items():
                scores[name] = rec
                pop_scores[name] = np.concatenate(blocks, axis=1).T.astype(np.float32)
            if null_attacks(core.view_attacks[self.name]):
                null_phi = _null_phi(nulls, results, audited, n)
                for name, (rec, pop) in _null_scores(core, self.name, ctx.round, feats, null_phi, pop_feats).items():
                    scores[name], pop_scores[name] = rec, pop
            h, ph = scores[head_name], pop_scores[head_name]
            member = r.member
            scored = np.ones(n, dtype=bool) if mask is None else mask
            on_pop = scored[P]
            per_client = [(k, (h[scored & member & (scored_by == k)], ph[j][on_pop])) for j, k in enumerate(audited)
                          if np.any(scored & member & (scored_by == k)) or mask is None]
            result = core.view_result(self.name, scores, scored, per_client)
            result["clients_audited"] = audited
            col = {k: j for j, k in enumerate(audited)}
            owner_col = np.array([col.get(int(k), -1) for k in r.owner[S]], dtype=np.int64)
            source_score = calibrated_source_scores(r, owner_col, pop_feats, source_feats, core.seed + ctx.round,
                                                    overwrite=True).T
            result["source_inference"] = attribute_sources(source_loss.T, r.owner[S], audited, source_score.T)
        tm, arrays, keep = self.name, ctx.arrays, core.keep(ctx.round)
        if mask is not None:
            arrays[round_key(tm, "scored")] = mask
        arrays[round_key(tm, "clients")] = np.array(audited, dtype=np.int64)
        arrays[round_key(tm, "scored_by")] = scored_by
        arrays[round_key(tm, "loss")] = loss.astype(np.float32)
        arrays[round_key(tm, "correct")] = correct
        arrays[round_key(tm, "source_loss")] = source_loss
        arrays[round_key(tm, "source_score")] = source_score.astype(np.float32)
        for a, s in scores.items():
            arrays[round_key(tm, "score", a)] = s.astype(np.float32)
        for a, s in pop_scores.items():   # the rounds the stacked attack reads need every attack's (score-only runs)
            if keep or a == head_name:
                arrays[round_key(tm, "pop_score", a)] = s.astype(np.float16)
        if keep:
            arrays[round_key(tm, "features")] = feats
            arrays[round_key(tm, "pop_features")] = pop_feats.astype(np.float16)   # loses nothing measurable
        return result


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


def _null_phi(nulls, results, audited, n) -> np.ndarray:
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


def _null_scores(core, tm, round_, feats, null_phi, pop_feats) -> dict:
    """The ``null`` attacks (FedMIA) of the server view: record-level scores under each record's source
    against its null clients, and the population sample under each audited client against ``m`` other
    audited clients; one call per attack, so that both share the attack's pooled estimates."""
    from fedaudit.attacks.base import AttackInputs, run_score_attack
    from fedaudit.attacks.fedmia import NULL_CLIENTS
    from fedaudit.auditor.null import null_positions, phi_logits

    phi_col = core.feature_names.index("phi")
    target = feats[:, phi_col].astype(np.float64)
    Ka, P = pop_feats.shape[0], pop_feats.shape[1]
    pop_phi = pop_feats[:, :, phi_col].astype(np.float64)                    # (clients, P)
    width = max(null_phi.shape[0], min(NULL_CLIENTS, Ka - 1))
    null_rec = np.full((width, null_phi.shape[1]), np.nan)
    null_rec[:null_phi.shape[0]] = null_phi
    pos = null_positions(Ka, P, NULL_CLIENTS, core.seed, round_)               # (clients, P, m)
    null_pop = np.full((width, Ka * P), np.nan)
    if pos.shape[2]:
        null_pop[:pos.shape[2]] = np.moveaxis(pop_phi[pos, np.arange(P)[None, :, None]], 2, 0).reshape(-1, Ka * P)
    phi_all = np.r_[target, pop_phi.ravel()]
    null_all = np.c_[null_rec, null_pop]
    ok = np.isfinite(phi_all) & np.isfinite(null_all).any(axis=0)
    out = {}
    for name in null_attacks(core.view_attacks[tm]):
        s = np.full(phi_all.size, np.nan)
        if ok.any():
            logits, labels = phi_logits(phi_all[ok])
            s[ok] = run_score_attack(name, AttackInputs(logits, labels, null_phi=null_all[:, ok]))
        out[name] = (s[:target.size], s[target.size:].reshape(Ka, P).astype(np.float32))
    return out


__all__ = ["AGGREGATE", "GLOBAL", "Participant", "RoundContext", "Server", "global_model_result", "rows_by_source"]
