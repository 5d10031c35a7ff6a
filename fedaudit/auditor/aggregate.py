"""Risk across rounds, per record, per client and per class, rebuilt from ``run_dir/audit`` and the ledger alone.

NumPy and scikit-learn only. For each threat model, from the per-round arrays the auditor saved:

- per record: the max and the mean over the observed rounds of the headline attack's per-round scores, and
  a **stacked** attack: one classifier fitted on the features of several rounds side by side (Nasr et al.
  2019 observed the federation at several epochs the same way), cross-fitted like the per-round attacks.
  The stacked score is the threat model's aggregated score; ``sigmoid`` of its log-odds is the record's
  membership probability under a 50% prior;
- ``risk``: the probability under the strongest adversary audited: the server when audited (it sees every
  global model a participant sees, and every client's model besides), else the participant. (The largest
  of the two probabilities would add the weaker view's noise to every record);
- per client (server view when audited): client k's members against every population record under k's
  models, with the round at which k's per-round AUC peaked;
- per class and per slice (:mod:`fedaudit.slices`);
- source inference: each member attributed to the client with the lowest loss, averaged over rounds.

Files: ``records.csv``, ``clients.csv``, ``member_probs.npy``, ``nonmember_probs.npy``, ``summary.json``
(see ``notes/RUNDIR.md``), and under ``audit/``: ``source_inference.csv`` (record, client, attributed, correct)
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

from fedaudit.auditor.attack import BLACKBOX, FITTED, cross_fit, headline, sigmoid
from fedaudit.auditor.core import audit_attacks, source_inference, summary_or_none
from fedaudit.auditor.records import AuditRecords
from fedaudit.auditor.state import AUDIT_DIR, SEP, load_round, round_path, saved_rounds
from fedaudit.config import load_scenario
from fedaudit.metrics import auc as auc_of
from fedaudit.rundir import atomic_save_npy, atomic_save_npz, atomic_write_text, json_safe

log = logging.getLogger(__name__)

STACK_ROUNDS = 8      # at most this many rounds (evenly spaced, always the last) side by side
STACK_C = 0.3         # stronger regularisation than per round: more features, same known records
THREAT_MODELS = ("server", "participant")


def _stack_rounds(rounds: list[int]) -> list[int]:
    if len(rounds) <= STACK_ROUNDS:
        return rounds
    picks = np.unique(np.round(np.linspace(0, len(rounds) - 1, STACK_ROUNDS)).astype(int))
    return [rounds[i] for i in picks]


class _View:
    """One threat model's per-round arrays, gathered over the rounds it was audited in."""

    def __init__(self, tm: str, data: dict, records: AuditRecords, head: str):
        self.tm = tm
        self.rounds = sorted(r for r, d in data.items() if f"{tm}{SEP}features" in d)
        self.data = {r: data[r] for r in self.rounds}
        self.records = records
        self.head = head
        self.server = tm == "server"

    def pair_scores(self, r: int, name: str) -> np.ndarray:
        """(n, K) for server, (n,) for participant: the per-round scores of attack ``name``."""
        return self.data[r][f"{self.tm}{SEP}score{SEP}{name}"].astype(np.float64)

    def record_level(self, values: np.ndarray) -> np.ndarray:
        """A record's value under its (pseudo-)owner's model (server) or as is (participant)."""
        if self.server:
            return values[np.arange(values.shape[0]), self.records.source]
        return values

    def per_round_scores(self) -> np.ndarray:
        """(n, R) record-level headline scores (NaN where the record's source client did not reply)."""
        return np.stack([self.record_level(self.pair_scores(r, self.head)) for r in self.rounds], axis=1)

    def features(self, r: int) -> np.ndarray:
        return self.data[r][f"{self.tm}{SEP}features"].astype(np.float64)


def _nan_reduce(fn, values: np.ndarray) -> np.ndarray:
    out = np.full(values.shape[0], np.nan)
    ok = ~np.isnan(values).all(axis=1)
    out[ok] = fn(values[ok], axis=1)
    return out


def _stacked(view: _View, attacks: list, feature_names: np.ndarray) -> np.ndarray:
    """Cross-fitted log-odds of a classifier on several rounds' features side by side.

    Returns (n, K) pair scores for server (record i under client k's models), (n,) for participant.
    """
    r = view.records
    rounds = _stack_rounds(view.rounds)
    fitted = [a for a in attacks if a in FITTED]
    if fitted:
        if "whitebox" in fitted:
            cols = np.arange(len(feature_names))
        else:
            cols = np.arange(len(BLACKBOX))
        blocks = [view.features(t)[..., cols] for t in rounds]
    else:   # score attacks only: stack their per-round scores
        blocks = [np.stack([view.pair_scores(t, a) for a in attacks], axis=-1) for t in rounds]
    stacked = np.concatenate(blocks, axis=-1)       # (n, K, R*F) or (n, R*F)
    fit_rows = view.record_level(stacked) if view.server else stacked
    return cross_fit(fit_rows, r.member, r.fold, r.known, stacked, c=STACK_C)


def _aggregate_view(view: _View, attacks: list, feature_names) -> dict:
    r = view.records
    member = r.member
    per_round = view.per_round_scores()
    pair_stacked = _stacked(view, attacks, feature_names)
    stacked = view.record_level(pair_stacked) if view.server else pair_stacked
    last = view.rounds[-1]
    aggregations = {"stacked": stacked, "max": _nan_reduce(np.nanmax, per_round),
                    "mean": _nan_reduce(np.nanmean, per_round), "last": per_round[:, -1]}
    summaries = {k: summary_or_none(v[member], v[~member]) for k, v in aggregations.items()}
    # per client, from the stacked pair scores: client k's members vs every population record
    pop = ~member
    clients = []
    for k in range(r.num_clients):
        mine = r.owner == k
        if not mine.any():
            continue
        ms = pair_stacked[mine, k] if view.server else pair_stacked[mine]
        ns = pair_stacked[pop, k] if view.server else pair_stacked[pop]
        s = summary_or_none(ms, ns)
        peak, peak_auc = None, -np.inf
        for t in view.rounds:
            h = view.pair_scores(t, view.head)
            hm = h[mine, k] if view.server else h[mine]
            hn = h[pop, k] if view.server else h[pop]
            hm, hn = hm[~np.isnan(hm)], hn[~np.isnan(hn)]
            if hm.size and hn.size:
                a = auc_of(hm, hn)
                if a > peak_auc:
                    peak, peak_auc = t, a
        clients.append({"client": k, "records": int(mine.sum()), "summary": s, "peak_round": peak})
    loss_key, correct_key = f"{view.tm}{SEP}loss", f"{view.tm}{SEP}correct"
    loss = view.record_level(view.data[last][loss_key].astype(np.float64))
    correct = view.record_level(view.data[last][correct_key])
    return {"score": stacked, "per_round": per_round, "aggregations": summaries, "clients": clients,
            "last_loss": loss, "last_correct": correct, "rounds": view.rounds}


def _source_inference(data: dict, records: AuditRecords, run_dir: Path, write: bool) -> dict | None:
    rounds = sorted(r for r, d in data.items() if f"server{SEP}loss" in d)
    if not rounds:
        return None
    K = records.num_clients
    member = records.member
    centred, per_round = [], []
    for t in rounds:
        loss = data[t][f"server{SEP}loss"].astype(np.float64)
        clients = [int(k) for k in data[t][f"server{SEP}clients"]]
        per_round.append({"round": t, **source_inference(loss, records.owner, clients)})
        # log loss, centred per record over the replying clients: every round weighs alike
        ll = np.log(loss + 1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # records no replying client scored
            centred.append(ll - np.nanmean(ll, axis=1, keepdims=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_over_rounds = np.nanmean(np.stack(centred), axis=0)        # (n, K)
    scored = member & ~np.isnan(mean_over_rounds).all(axis=1)
    attributed = np.full(len(records), -1)
    attributed[scored] = np.argmin(np.where(np.isnan(mean_over_rounds[scored]), np.inf,
                                            mean_over_rounds[scored]), axis=1)
    correct = attributed == records.owner
    acc = float(np.mean(correct[scored])) if scored.any() else None
    if write:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["record", "client", "attributed", "correct"])
        order = np.argsort(records.index[member])
        idx = np.flatnonzero(member)[order]
        for i in idx:
            w.writerow([int(records.index[i]), int(records.owner[i]), int(attributed[i]) if scored[i] else "",
                        int(correct[i]) if scored[i] else ""])
        atomic_write_text(run_dir / AUDIT_DIR / "source_inference.csv", buf.getvalue())
    return {"accuracy": acc, "chance": 1.0 / K, "records": int(scored.sum()), "rounds": len(rounds),
            "method": "argmin over clients of the record's log loss, centred per round and averaged over rounds",
            "per_round": per_round}


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
    feature_names = next((d["feature_names"] for d in data.values()), np.array([]))
    member = records.member
    views = {}
    for tm in scenario.audit.threat_models:
        view = _View(tm, data, records, head)
        if view.rounds:
            # attacks whose scores every round saved (a reference attack is missing where its models failed)
            saved = [a for a in attacks if all(f"{tm}{SEP}score{SEP}{a}" in view.data[t] for t in view.rounds)]
            if saved and saved != attacks:
                view.head = headline(saved)
            views[tm] = _aggregate_view(view, saved or attacks, feature_names)
    probs = {tm: sigmoid(v["score"]) for tm, v in views.items()}
    risk_view = next((tm for tm in THREAT_MODELS if tm in probs), None)
    risk = probs[risk_view] if risk_view else np.full(len(records), np.nan)
    summary: dict = {"threat_models": {}, "rounds": sorted(data), "attack": f"stacked-{head}"
                     if any(a in FITTED for a in attacks) else "stacked-scores",
                     "records": {"members": int(member.sum()), "nonmembers": int((~member).sum()),
                                 "known_of_each": int(records.known[member].sum()), "folds": records.folds}}
    slices: dict = {}
    for tm, v in views.items():
        s = v["aggregations"]["stacked"]
        entry = s.to_dict() if s is not None else {}
        entry["attack"] = summary["attack"]
        entry["rounds"] = v["rounds"]
        entry["aggregations"] = {k: (x.to_dict() if x is not None else None) for k, x in v["aggregations"].items()}
        summary["threat_models"][tm] = entry
        slices[tm] = _slices(v["score"], member, records.label, v["last_loss"], v["last_correct"])
    rs = summary_or_none(risk[member], risk[~member])
    summary["risk"] = {**(rs.to_dict() if rs is not None else {}), "threat_model": risk_view}
    summary["source_inference"] = _source_inference(data, records, run_dir, write) if "server" in views else None
    summary["slices"] = slices
    summary["classes"] = _class_risk(records, risk)
    if scenario.dp.mode != "none":
        summary["dp"] = {"mode": scenario.dp.mode, "noise_multiplier": scenario.dp.noise_multiplier,
                         "clipping_norm": scenario.dp.clipping_norm, "delta": scenario.dp.delta,
                         "accountant_epsilon": None}
    client_view = views.get("server") or next(iter(views.values()), None)
    if write:
        _write_files(run_dir, records, views, probs, risk, client_view, summary)
    return json_safe(summary)


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


def _write_files(run_dir, records, views, probs, risk, client_view, summary) -> None:
    member = records.member
    order = np.argsort(records.index)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["record", "client", "member", "label", "server", "participant", "risk"])
    for i in order:
        w.writerow([int(records.index[i]), int(records.owner[i]), int(member[i]), int(records.label[i]),
                    _fmt(probs["server"][i]) if "server" in probs else "",
                    _fmt(probs["participant"][i]) if "participant" in probs else "", _fmt(risk[i])])
    atomic_write_text(run_dir / "records.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["client", "records", "auc", "tpr_at_0_1pct", "mean_risk", "max_risk", "peak_round"])
    for c in (client_view["clients"] if client_view else []):
        mine = records.owner == c["client"]
        s = c["summary"]
        rk = risk[mine]
        rk = rk[~np.isnan(rk)]
        w.writerow([c["client"], c["records"], _fmt(s.auc if s else None), _fmt(s.tpr_at_0_1pct if s else None),
                    _fmt(rk.mean() if rk.size else None), _fmt(rk.max() if rk.size else None),
                    c["peak_round"] if c["peak_round"] is not None else ""])
    atomic_write_text(run_dir / "clients.csv", buf.getvalue())
    per_record = {"record": records.index[order], "risk": risk[order]}
    for tm, v in views.items():
        per_record[f"{tm}{SEP}rounds"] = np.asarray(v["rounds"], dtype=np.int64)
        per_record[f"{tm}{SEP}per_round"] = v["per_round"][order]
        per_record[f"{tm}{SEP}max"] = _nan_reduce(np.nanmax, v["per_round"])[order]
        per_record[f"{tm}{SEP}mean"] = _nan_reduce(np.nanmean, v["per_round"])[order]
        per_record[f"{tm}{SEP}stacked"] = v["score"][order]
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
    merged = {**existing, **json_safe(summary)}
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
