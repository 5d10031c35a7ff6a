"""Risk across rounds, per record, per client and per class, rebuilt from ``run_dir/audit`` and the ledger alone.

NumPy and scikit-learn only. For each threat model, from the per-round arrays the auditor saved:

- per record: the max and the mean over its own rounds (those in which the model of the client that holds it
  scored it: :func:`own_rounds`) of the headline attack's per-round scores, and a **stacked** attack: one
  classifier fitted on the features of several of its own rounds side by side (Nasr et al. 2019 observed the
  federation at several epochs the same way), cross-fitted like the per-round attacks.
  The stacked score is the threat model's aggregated score; ``sigmoid`` of its log-odds is the record's
  membership probability under a 50% prior;
- ``risk``: the probability under the strongest adversary audited (:func:`fedaudit.threat_model.strongest`: the
  server when audited, since it sees every global model a participant sees and every client's model besides,
  else the participant). (The largest of the probabilities would add the weaker view's noise to every record);
- per client (the strongest view with per-client models when audited): client k's members against every
  population record under k's models, with the round at which k's per-round AUC peaked;
- per class and per slice (:mod:`fedaudit.slices`);
- source inference: each sampled member attributed to the client whose models' calibrated source scores
  (averaged over rounds) point to it most, with the naive lowest-loss attribution beside it.

Files: ``records.csv``, ``clients.csv``, ``member_probs.npy``, ``nonmember_probs.npy``, ``summary.json``
(:class:`fedaudit.schema.RunSummary`), and under ``audit/``: ``source_inference.csv`` (record, client, attributed, correct,
lowest_loss, lowest_loss_correct)
and ``aggregated.npz`` (per record, sorted by record: ``<tm>__per_round`` headline scores (records x rounds,
log-odds or the attack's score), ``<tm>__max``, ``<tm>__mean``, ``<tm>__stacked`` and ``risk``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from fedaudit.auditor.attack import (audit_attacks, clean_rows, fit_folds, headline, ranked_scores, sigmoid, spec,
                                     trained_attacks, view_attacks)
from fedaudit.auditor.records import AuditRecords
from fedaudit.auditor.results import AGGREGATE_ONLY, light_metrics, low_fpr_choice, summary_or_none
from fedaudit.auditor.sources import CALIBRATED, LOWEST_LOSS, attribute_sources, attribution_accuracy
from fedaudit.auditor.state import (AUDIT_DIR, STACK_ROUNDS, load_round, round_path, saved_rounds,
                                    stack_slots)
from fedaudit.auditor.views import rows_by_source
from fedaudit.config import load_scenario
from fedaudit.metrics import auc as auc_of
from fedaudit.rundir import atomic_save_npy, atomic_save_npz, atomic_write_text, json_safe, read_jsonl
from fedaudit.schema import RunSummary, round_key
from fedaudit.threat_model import get_threat_model, ordered, strongest, threat_model_names
from fedaudit.twins import audited_here

log = logging.getLogger(__name__)

STACK_C = 0.3         # stronger regularisation than per round: more features, same known records
_STAND_IN_STREAM = 18  # draws whose rounds a population record takes when its pseudo-owner never replied


class _View:
    """One threat model's per-round arrays, gathered over the rounds it was audited in.

    Every array is record-level: record i under the model that scored it that round (server: its owner's,
    or for a population record its pseudo-owner's; participant: the global model), NaN where none did. The
    view of a threat model with per-client models also holds the population sample under every audited client
    model (``pop_*``)."""

    def __init__(self, tm: str, data: dict, records: AuditRecords, head: str):
        self.tm = tm
        self.rounds = sorted(r for r, d in data.items() if round_key(tm, "loss") in d)
        self.data = {r: data[r] for r in self.rounds}
        self.feature_rounds = [r for r in self.rounds if round_key(tm, "features") in self.data[r]]
        self.records = records
        self.head = head
        self.own: dict = {}       # own_rounds() per tuple of rounds
        # a per-client view (each client's model); under secure aggregation the server's view is the
        # aggregate-only attack, saved like the participant's, without per-client models
        self.server = get_threat_model(tm).per_client_models and \
            any(round_key(tm, "clients") in d for d in self.data.values())
        # which audited clients' models each round holds, in the order of its pop_* arrays
        self.clients = {r: ([int(k) for k in self.data[r][round_key(tm, "clients")]] if self.server else [])
                        for r in self.rounds}
        last = self.data[self.rounds[-1]] if self.rounds else {}
        key = round_key(tm, "eligible")
        # the records a view's attacks are fitted on, as its last round saved them (participant: a member counts once
        # its owner has trained); else every record (server: NaN scores already leave out members whose owner never
        # replied)
        self.eligible = last[key].astype(bool) if key in last else np.ones(len(records), dtype=bool)
        # the records its metrics are on (an active adversary's targets); its attacks are fitted on every eligible one
        scored = round_key(tm, "scored")
        self.scored = self.eligible & (last[scored].astype(bool) if scored in last else True)

    def a(self, r: int, name: str) -> np.ndarray:
        return self.data[r][round_key(self.tm, *name.split("/"))]

    def scores(self, r: int, name: str) -> np.ndarray:
        return self.a(r, f"score/{name}").astype(np.float64)

    def per_round_scores(self) -> np.ndarray:
        """(n, R) headline scores per round (NaN where no model of the round scored the record)."""
        return np.stack([self.scores(r, self.head) for r in self.rounds], axis=1)

    def latest(self, name: str) -> np.ndarray:
        """Per record, its most recent finite value of ``name`` (loss, correct) over the rounds."""
        out = np.full(len(self.records), np.nan)
        for r in self.rounds:
            v = self.a(r, name).astype(np.float64)
            if name == "loss":
                ok = ~np.isnan(v)
            else:   # correct: only where the record was scored that round
                ok = ~np.isnan(self.a(r, "loss").astype(np.float64))
            out[ok] = v[ok]
        return out


def _last(values: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Per record, its value in the last of its own rounds (NaN: none)."""
    if not values.shape[1]:
        return np.full(values.shape[0], np.nan)
    last = values.shape[1] - 1 - np.argmax(own[:, ::-1], axis=1)
    return np.where(own.any(axis=1), values[np.arange(values.shape[0]), last], np.nan)


def _nan_reduce(fn, values: np.ndarray) -> np.ndarray:
    out = np.full(values.shape[0], np.nan)
    ok = ~np.isnan(values).all(axis=1)
    out[ok] = fn(values[ok], axis=1)
    return out


class _Stacked:
    """A cross-fitted classifier on several rounds side by side (Nasr et al. 2019 observed the federation at
    several epochs the same way): the rounds' features when a fitted attack ran, else their scores.

    The rounds are each record's own (:func:`own_rounds`): those in which it was scored under the model of the
    client that holds it (server: its owner's, a population record's pseudo-owner's; participant: every round),
    at most :data:`STACK_ROUNDS` of them, evenly spaced and always the last, right-aligned so that the last column
    block is the record's latest. Under full participation these are the same calendar rounds for every record;
    under client sampling a member's block is its owner's rounds, not calendar rounds its owner skipped (which
    would leave its columns empty beside a population record's full ones)."""

    def __init__(self, view: _View, attacks: list, feature_names):
        r = view.records
        self.view = view
        fitted = trained_attacks(attacks)
        self.fitted = bool(fitted) and bool(view.feature_rounds)
        if self.fitted:   # every column a trained attack of the view reads
            names = list(feature_names)
            self.cols = np.unique(np.concatenate([np.asarray(spec(a).columns(names), dtype=np.int64) for a in fitted]))
            self.candidates = list(view.feature_rounds)
        else:
            self.attacks = [a for a in attacks if not spec(a).trained]
            self.candidates = list(view.rounds)
        self._scales: dict = {}
        own = own_rounds(view, self.candidates)
        self.width = int(min(STACK_ROUNDS, own.sum(axis=1).max(initial=0)))
        slots = stack_slots(own, self.width)
        self.rounds = [self.candidates[j] for j in np.unique(slots[slots >= 0])]
        rows = self._rows(slots, len(r), self._record_block)
        self.attack = fit_folds(rows, r.member, r.fold, r.known, c=STACK_C, eligible=view.eligible)
        self.score = self.attack.score(np.arange(len(r)), rows)
        # named after what it stacks: the features of the view's best-ranked trained attack, or the scores
        self.name = f"stacked-{headline(fitted)}" if self.fitted else "stacked-scores"

    def _block_width(self) -> int:
        return len(self.cols) if self.fitted else len(self.attacks)

    def _rows(self, slots: np.ndarray, n: int, block) -> np.ndarray:
        """(n, width * block width): slot s of row i holds ``block(t)[i]`` for the round t in ``slots[i, s]``."""
        w = self._block_width()
        rows = np.full((n, max(self.width, 1) * w), np.nan)
        for j, t in enumerate(self.candidates):
            hit = slots == j
            if not hit.any():
                continue
            b = block(t)
            for s in np.flatnonzero(hit.any(axis=0)):
                rows[hit[:, s], s * w:(s + 1) * w] = b[hit[:, s]]
        return rows

    def _raw_block(self, t: int) -> np.ndarray:
        if self.fitted:
            return self.view.a(t, "features").astype(np.float64)[:, self.cols]
        return np.stack([self.view.scores(t, a) for a in self.attacks], axis=-1)

    def _round_scale(self, t: int, block: np.ndarray | None = None) -> tuple:
        """Round t's centre and scale of each column, over every record it scored (no membership read): a
        column block that holds different records' different rounds compares them on one scale."""
        if t not in self._scales:
            b = clean_rows(self._raw_block(t)) if block is None else block
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)     # a column no record has this round
                mu, sd = np.nanmean(b, axis=0), np.nanstd(b, axis=0)
            self._scales[t] = (np.nan_to_num(mu), np.where(np.isfinite(sd) & (sd > 1e-12), sd, 1.0))
        return self._scales[t]

    def _record_block(self, t: int) -> np.ndarray:
        b = clean_rows(self._raw_block(t))
        mu, sd = self._round_scale(t, b)
        return (b - mu) / sd

    def _pop_block(self, t: int, k: int) -> np.ndarray:
        """The population sample under client k's model of round t, on the round's scale."""
        v = self.view
        j = v.clients[t].index(k)
        if self.fitted:
            b = v.a(t, "pop_features")[j].astype(np.float64)[:, self.cols]
        else:
            b = np.stack([v.a(t, f"pop_score/{a}")[j].astype(np.float64) for a in self.attacks], axis=-1)
        mu, sd = self._round_scale(t)
        return (clean_rows(b) - mu) / sd

    def population_under(self, k: int) -> np.ndarray:
        """Stacked scores of the population sample under client k's models (server), in k's rounds as its members'."""
        v, P = self.view, self.view.records.population_sample
        own = np.array([[k in v.clients[t] for t in self.candidates]])
        slots = np.repeat(stack_slots(own, self.width), P.size, axis=0)
        rows = self._rows(slots, P.size, lambda t: self._pop_block(t, k))
        return self.attack.score(P, rows)


def own_rounds(view: _View, rounds: list) -> np.ndarray:
    """(n, len(rounds)) whether each record was scored in that round under the model of the client that holds it.

    Server: the round's ``scored_by`` is the record's source (a member's owner, a population record's
    pseudo-owner). A population record whose pseudo-owner never replied (it was scored under stand-ins) takes the
    rounds of a client drawn from the seed among those that did, so that non-members have as many own rounds as
    members have, whatever the participation: one or two of twenty under 1% sampling, every round when a deviating
    server sees one client's model each round. Participant and aggregate-only views: every round that scored the
    record (the global model scores every record)."""
    key = tuple(rounds)
    if key not in view.own:
        view.own[key] = _own_rounds(view, rounds)
    return view.own[key]


def _own_rounds(view: _View, rounds: list) -> np.ndarray:
    r = view.records
    finite = np.stack([np.isfinite(view.a(t, "loss").astype(np.float64)) for t in rounds], axis=1) if rounds \
        else np.zeros((len(r), 0), dtype=bool)
    key = round_key(view.tm, "scored_by")
    if not view.server or not all(key in view.data[t] for t in rounds):
        return finite
    own = finite & np.stack([view.data[t][key] == r.source for t in rounds], axis=1)
    orphan = np.flatnonzero(~own.any(axis=1) & finite.any(axis=1) & ~r.member)
    took_part = np.zeros((max(r.num_clients, 1), len(rounds)), dtype=bool)    # client x round: its model seen
    for j, t in enumerate(rounds):
        took_part[np.asarray(view.clients[t], dtype=np.int64), j] = True
    donors = np.flatnonzero(took_part.any(axis=1))
    if orphan.size and donors.size:
        rng = np.random.default_rng(np.random.SeedSequence([int(r.seed_for_rounds), 4, _STAND_IN_STREAM]))
        own[orphan] = finite[orphan] & took_part[donors[rng.integers(0, donors.size, size=orphan.size)]]
    return own


def _aggregate_view(view: _View, attacks: list, feature_names, round_clients: dict) -> dict:
    r = view.records
    member, eligible = r.member, view.scored          # the metrics' records (the stack is fitted on view.eligible)
    per_round = view.per_round_scores()
    stacker = _Stacked(view, attacks, feature_names)
    stacked = stacker.score
    # across rounds, each record's own rounds only (under client sampling a population record is scored every
    # round, a member only when its owner trained: a mean over all of them would average a non-member's score
    # over many more models than a member's, and separate them by that alone)
    own = own_rounds(view, view.rounds)
    mine = np.where(own, per_round, np.nan)
    aggregations = {"stacked": stacked, "max": _nan_reduce(np.nanmax, mine),
                    "mean": _nan_reduce(np.nanmean, mine), "last": _last(mine, own)}
    m, n = member & eligible, ~member & eligible
    summaries = {k: summary_or_none(v[m], v[n]) for k, v in aggregations.items()}
    # every attack across rounds: the mean of its per-round scores (for FedMIA's z, Stouffer's combination)
    across, means = {}, {}
    for a in attacks:
        if all(round_key(view.tm, "score", a) in view.data[t] for t in view.rounds) and view.rounds:
            scores = np.where(own, np.stack([view.scores(t, a) for t in view.rounds], axis=1), np.nan)
            means[a] = _nan_reduce(np.nanmean, scores)
            across[a] = summary_or_none(means[a][m], means[a][n])
    # the attack reported at 1% FPR: the stack or one attack across rounds, chosen on the known records
    candidates = {stacker.name: stacked, **ranked_scores(means, view.head)}
    low_name, unknown = low_fpr_choice(candidates, member, r.known, eligible)
    low = candidates[low_name]
    low_summary = summary_or_none(low[member & unknown], low[~member & unknown])
    # per client: client k's members against the population sample, under k's models (server) or the
    # global models (participant), with the round at which k's per-round AUC peaked
    P = r.population_sample
    clients = []
    participation = _participation(view, round_clients)
    rows_of = rows_by_source(r.owner, range(r.num_clients))     # one sort, not a scan per client
    heads = {t: view.scores(t, view.head) for t in view.rounds}
    for k in range(r.num_clients):
        held = rows_of[k]
        mine = held[eligible[held]]
        if not mine.size:
            continue
        ms = stacked[mine]
        ns = (stacker.population_under(k) if view.server else stacked[P])[eligible[P]]
        s = light_metrics(ms, ns)      # AUC and TPR at low FPR, no intervals: a thousand clients stay cheap
        peak, peak_auc = None, -np.inf
        for t in view.rounds:
            hm = heads[t][mine]
            if view.server:
                if k not in view.clients[t]:
                    continue
                hn = view.a(t, f"pop_score/{view.head}")[view.clients[t].index(k)].astype(np.float64)
            else:
                hn = view.scores(t, view.head)[P]
            hm, hn = hm[~np.isnan(hm)], hn[~np.isnan(hn)]
            if hm.size and hn.size:
                a = auc_of(hm, hn)
                if a > peak_auc:
                    peak, peak_auc = t, a
        clients.append({"client": k, "records": int(held.size), "summary": s, "peak_round": peak,
                        "rounds": participation.get(k, [])})
    return {"score": stacked, "per_round": per_round, "aggregations": summaries, "clients": clients,
            "across_rounds": across, "head": view.head, "low_fpr_attack": low_name, "low_fpr": low_summary,
            "last_loss": view.latest("loss"), "last_correct": view.latest("correct").astype(bool) if view.rounds
            else np.zeros(len(r), dtype=bool), "rounds": view.rounds, "eligible": eligible, "per_client": view.server,
            "stacked_rounds": stacker.rounds, "stack_name": stacker.name}


def _participation(view: _View, round_clients: dict) -> dict:
    """{client: the rounds it trained in} (server: the rounds its model was audited in)."""
    out: dict = {}
    for t in view.rounds:
        for k in (view.clients[t] if view.server else round_clients.get(t, [])):
            out.setdefault(int(k), []).append(t)
    return out


class _AcrossRounds:
    """Per source record and client: the mean over the rounds the client was audited in of a per-round score,
    centred per record over that round's clients (so that every round weighs alike)."""

    def __init__(self, S: int, K: int):
        self.total, self.count = np.zeros((S, K)), np.zeros((S, K))

    def add(self, score: np.ndarray, clients: list) -> None:
        """``score`` (S, len(clients)), higher: more likely the source (NaN: no score)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # a record without any score this round
            centred = score - np.nanmean(score, axis=1, keepdims=True)
        ok = np.isfinite(centred)
        self.total[:, clients] += np.where(ok, centred, 0.0)
        self.count[:, clients] += ok

    def attribute(self, owner: np.ndarray, seen: list) -> tuple:
        """(attributed client per record or -1, whether the record was attributed)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.count > 0, self.total / np.maximum(self.count, 1), -np.inf)
        scored = np.isin(owner, seen) & np.isfinite(mean).any(axis=1)
        attributed = np.full(owner.size, -1)
        attributed[scored] = np.argmax(mean[scored], axis=1)
        return attributed, scored


def _source_inference(tm: str, data: dict, records: AuditRecords, run_dir: Path, write: bool) -> dict | None:
    """Source inference across rounds by threat model ``tm`` (one with per-client models): the calibrated
    attribution (see :func:`calibrated_source_scores`) and the naive lowest-loss one beside it, each per round and
    with the rounds combined."""
    rounds = sorted(r for r, d in data.items() if round_key(tm, "source_loss") in d)
    if not rounds:
        return None
    S = records.source_sample
    owner = records.owner[S]
    K = records.num_clients
    naive, calibrated = _AcrossRounds(S.size, K), _AcrossRounds(S.size, K)
    per_round, seen, with_scores = [], set(), 0
    for t in rounds:
        clients = [int(k) for k in data[t][round_key(tm, "clients")]]
        seen.update(clients)
        loss = data[t][round_key(tm, "source_loss")].astype(np.float64).T          # (S, clients)
        key = round_key(tm, "source_score")
        score = data[t][key].astype(np.float64).T if key in data[t] else None  # older run dirs: none
        per_round.append({"round": t, **attribute_sources(loss, owner, clients, score)})
        if not clients:
            continue
        naive.add(-np.log(loss + 1e-12), clients)   # log loss: the lowest-loss rule, every round alike
        if score is not None:
            calibrated.add(score, clients)
            with_scores += 1
    seen = sorted(seen)
    chance = 1.0 / max(len(seen), 1)
    naive_attr, naive_ok = naive.attribute(owner, seen)
    baseline = {**attribution_accuracy((naive_attr == owner)[naive_ok]), "method": LOWEST_LOSS + "; log loss "
                "centred per round over its clients, averaged over the rounds each client took part in"}
    if with_scores:
        attributed, scored = calibrated.attribute(owner, seen)
        head = {**attribution_accuracy((attributed == owner)[scored]), "method": CALIBRATED + "; centred per "
                "round over its clients, averaged over the rounds each client took part in"}
    else:
        attributed, scored, head = naive_attr, naive_ok, baseline
    correct = attributed == owner
    if write:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["record", "client", "attributed", "correct", "lowest_loss", "lowest_loss_correct"])
        for i in np.argsort(records.index[S]):
            w.writerow([int(records.index[S[i]]), int(owner[i]), int(attributed[i]) if scored[i] else "",
                        int(correct[i]) if scored[i] else "", int(naive_attr[i]) if naive_ok[i] else "",
                        int(naive_attr[i] == owner[i]) if naive_ok[i] else ""])
        atomic_write_text(run_dir / AUDIT_DIR / "source_inference.csv", buf.getvalue())
    return {**head, "chance": chance, "records": int(scored.sum()), "sample": int(S.size), "rounds": len(rounds),
            "lowest_loss": baseline, "per_round": per_round}


def _fmt(v) -> str:
    if v is None:
        return ""
    v = float(v)
    return "" if not np.isfinite(v) else f"{v:.9g}"


def _class_risk(records: AuditRecords, risk: np.ndarray) -> list:
    out = []
    member = records.member
    for c in np.unique(records.label):
        sel = records.label == c
        m, n = risk[sel & member], risk[sel & ~member]
        s = summary_or_none(m, n)
        out.append({"class": int(c), "members": int((sel & member).sum()), "nonmembers": int((sel & ~member).sum()),
                    "mean_member_risk": float(np.nanmean(m)) if np.isfinite(m).any() else None,
                    "mean_nonmember_risk": float(np.nanmean(n)) if np.isfinite(n).any() else None,
                    "auc": s.auc if s is not None else None})
    return out


def aggregate_run(run_dir, *, write: bool = True) -> dict:
    """Rebuild the run's per-record, per-client and summary files from ``run_dir/audit`` and the ledger.

    Returns the summary (the content of ``summary.json``). Rounds whose arrays are saved are used, whether or
    not their line in rounds.jsonl was written before an interruption.
    """
    run_dir = Path(run_dir)
    scenario = load_scenario(run_dir / "scenario.toml")
    records = AuditRecords.load(run_dir / AUDIT_DIR / "records.npz")
    attacks, _ = audit_attacks(scenario.audit.attacks, scenario.audit.reference_models)
    head = headline(attacks)
    data = {r: load_round(round_path(run_dir, r)) for r in saved_rounds(run_dir)}
    if not data:
        log.warning("%s: no audited round to aggregate", run_dir)
    # from a round that computed features (a round where no model was probed saves none)
    feature_names = next((d["feature_names"] for d in data.values() if d["feature_names"].size), np.array([]))
    member = records.member
    round_clients = _round_clients(run_dir, data, records)
    views = {}
    secagg = bool(scenario.federation.secure_aggregation)
    for tm in audited_here(scenario):
        view = _View(tm, data, records, head)
        if view.rounds:
            # attacks whose scores every round saved (a reference attack is missing where its models failed)
            mine = view_attacks(attacks, get_threat_model(tm).attack_view_for(secagg))
            saved = [a for a in mine if all(round_key(tm, "score", a) in view.data[t] for t in view.rounds)]
            view.head = headline(saved or mine)
            views[tm] = _aggregate_view(view, saved or mine, feature_names, round_clients)
    probs = {tm: sigmoid(v["score"]) for tm, v in views.items()}
    risk_view = strongest(probs)
    risk = probs[risk_view] if risk_view else np.full(len(records), np.nan)
    eligible = views[risk_view]["eligible"] if risk_view else np.ones(len(records), dtype=bool)
    trained = _rounds_trained(round_clients, records)
    # the run's attack: the stack of the view its risk is read from
    stack_name = (views[risk_view]["stack_name"] if risk_view else
                  f"stacked-{head}" if trained_attacks(attacks) else "stacked-scores")
    summary: dict = {"threat_models": {}, "rounds": sorted(data), "attack": stack_name,
                     "records": {"members": int(member.sum()), "nonmembers": int((~member).sum()),
                                 "known_of_each": int(records.known[member].sum()), "folds": records.folds,
                                 "members_trained": int(np.sum(member & (trained > 0))),
                                 "population_sample": int(records.population_sample.size),
                                 "source_sample": int(records.source_sample.size)}}
    slices: dict = {}
    for tm, v in views.items():
        s = v["aggregations"]["stacked"]
        entry = s.to_dict() if s is not None else {}
        entry["attack"] = v["stack_name"]
        entry["rounds"] = v["rounds"]
        entry["aggregations"] = {k: (x.to_dict() if x is not None else None) for k, x in v["aggregations"].items()}
        entry["headline"] = v["head"]
        entry["attacks_across_rounds"] = {a: (x.to_dict() if x is not None else None)
                                          for a, x in v["across_rounds"].items()}
        entry["stacked_rounds"] = v["stacked_rounds"]
        entry["low_fpr_attack"] = v["low_fpr_attack"]
        entry["low_fpr"] = v["low_fpr"].to_dict() if v["low_fpr"] is not None else None
        summary["threat_models"][tm] = entry
        ok = v["eligible"]
        slices[tm] = _slices(v["score"][ok], member[ok], records.label[ok], v["last_loss"][ok], v["last_correct"][ok])
    rs = summary_or_none(risk[member & eligible], risk[~member & eligible])
    summary["risk"] = {**(rs.to_dict() if rs is not None else {}), "threat_model": risk_view}
    client_tm = next((tm for tm, v in views.items() if v["per_client"]), None)   # views are strongest first
    summary["source_inference"] = _source_inference(client_tm, data, records, run_dir, write) if client_tm else None
    if scenario.federation.secure_aggregation:
        # the server saw theta_prev and the sum only: no client's model, so no per-client view and no source
        # inference; its figures are those of the attack on the aggregated models
        summary["secure_aggregation"] = {"protocol": "SecAgg+", "server_view": AGGREGATE_ONLY,
                                         "source_inference": "not applicable: the server never sees one client's "
                                                             "update",
                                         "clients": "each client's records under the aggregated models (clients.csv); "
                                                    "no client's own model was seen"}
        for tm in summary["threat_models"]:
            if get_threat_model(tm).secure_aggregation_description:
                summary["threat_models"][tm]["view"] = AGGREGATE_ONLY
    summary["slices"] = slices
    summary["classes"] = _class_risk(records, np.where(eligible, risk, np.nan))
    if scenario.dp.mode != "none":
        summary["dp"] = {"mode": scenario.dp.mode, "noise_multiplier": scenario.dp.noise_multiplier,
                         "clipping_norm": scenario.dp.clipping_norm, "delta": scenario.dp.delta,
                         "accountant_epsilon": None}
    if scenario.audit.inferences:
        from fedaudit.inferences.base import summarize_rounds

        summary["inferences"] = summarize_rounds(scenario.audit.inferences, read_jsonl(run_dir / "rounds.jsonl"))
    client_view = views.get(client_tm) if client_tm else next(iter(views.values()), None)
    summary = RunSummary.from_dict(json_safe(summary)).to_dict()
    if write:
        _write_files(run_dir, records, views, probs, risk, client_view, summary, trained)
    return summary


def _round_clients(run_dir: Path, data: dict, records: AuditRecords) -> dict:
    """{round: the clients that replied}: rounds.jsonl's ``clients``, else the server's audited clients, else
    (neither recorded) every client."""
    lines = {row.get("round"): row for row in read_jsonl(run_dir / "rounds.jsonl")}
    out = {}
    for t, d in data.items():
        clients = (lines.get(t) or {}).get("clients")
        if clients is None:
            keys = [round_key(tm, "clients") for tm in threat_model_names() if get_threat_model(tm).per_client_models
                    and round_key(tm, "clients") in d]
            clients = d[keys[0]].tolist() if keys else list(range(records.num_clients))
        out[t] = [int(k) for k in clients]
    return out


def _rounds_trained(round_clients: dict, records: AuditRecords) -> np.ndarray:
    """Per audited record: in how many audited rounds its owner trained (0 for population records); a member
    whose owner never trained is in no model's training set."""
    counts = np.zeros(records.num_clients, dtype=np.int64)
    for clients in round_clients.values():
        for k in clients:
            if 0 <= k < counts.size:
                counts[k] += 1
    out = np.zeros(len(records), dtype=np.int64)
    out[records.member] = counts[records.owner[records.member]]
    return out


def _slices(score, member, labels, loss, correct):
    try:
        from fedaudit.slices import slice_metrics
    except ImportError:
        return None
    ok = ~np.isnan(score) & ~np.isnan(loss)
    m, n = ok & member, ok & ~member
    if not m.any() or not n.any():
        return None
    return slice_metrics(score[m], score[n], labels[m], labels[n], loss[m], loss[n], correct[m], correct[n])


def _write_files(run_dir, records, views, probs, risk, client_view, summary, trained) -> None:
    member = records.member
    order = np.argsort(records.index)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # every passive threat model (empty where not audited) and whichever was audited here
    columns = ordered({tm for tm in threat_model_names() if not get_threat_model(tm).deviation} | set(probs))
    w.writerow(["record", "client", "member", "label", *columns, "risk", "rounds_trained"])
    for i in order:
        w.writerow([int(records.index[i]), int(records.owner[i]), int(member[i]), int(records.label[i]),
                    *[_fmt(probs[tm][i]) if tm in probs else "" for tm in columns], _fmt(risk[i]),
                    int(trained[i]) if member[i] else ""])
    atomic_write_text(run_dir / "records.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["client", "records", "auc", "tpr_at_0_1pct", "mean_risk", "max_risk", "peak_round", "rounds"])
    listed = client_view["clients"] if client_view else []
    rows_of = rows_by_source(records.owner, [c["client"] for c in listed])
    for c in listed:
        mine = rows_of[int(c["client"])]
        s = c["summary"]
        rk = risk[mine]
        rk = rk[~np.isnan(rk)]
        w.writerow([c["client"], c["records"], _fmt(s["auc"]), _fmt(s["tpr_at_0_1pct"]),
                    _fmt(rk.mean() if rk.size else None), _fmt(rk.max() if rk.size else None),
                    c["peak_round"] if c["peak_round"] is not None else "", " ".join(str(t) for t in c["rounds"])])
    atomic_write_text(run_dir / "clients.csv", buf.getvalue())
    per_record = {"record": records.index[order], "risk": risk[order]}
    for tm, v in views.items():
        per_record[round_key(tm, "rounds")] = np.asarray(v["rounds"], dtype=np.int64)
        per_record[round_key(tm, "per_round")] = v["per_round"][order]
        per_record[round_key(tm, "max")] = _nan_reduce(np.nanmax, v["per_round"])[order]
        per_record[round_key(tm, "mean")] = _nan_reduce(np.nanmean, v["per_round"])[order]
        per_record[round_key(tm, "stacked")] = v["score"][order]
    atomic_save_npz(run_dir / AUDIT_DIR / "aggregated.npz", **per_record)
    atomic_save_npy(run_dir / "member_probs.npy", risk[order][member[order]].astype(np.float64))
    atomic_save_npy(run_dir / "nonmember_probs.npy", risk[order][~member[order]].astype(np.float64))
    path = run_dir / "summary.json"
    existing = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            existing = {}
    if "dp" in existing and "dp" in summary and summary["dp"].get("accountant_epsilon") is None:
        summary["dp"] = {**summary["dp"], **existing["dp"]}
    existing.pop("privacy", None)   # derived from the headlines rewritten here: recomputed when the run ends
    # the deviating adversaries' entries come from their own runs (fedaudit.twins.merge_twin): kept
    kept = {tm: e for tm, e in (existing.get("threat_models") or {}).items()
            if tm not in summary["threat_models"] and tm in threat_model_names() and get_threat_model(tm).deviation}
    merged = RunSummary.from_dict({**existing, **summary,
                                   "threat_models": {**summary["threat_models"], **kept}}).to_dict()
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
