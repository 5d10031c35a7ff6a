"""Adversaries that deviate from the protocol run as federations of their own, beside the passive run of the same seed.

A deviating threat model (``deviation`` in :mod:`fedaudit.threat_model`: the active server, the isolating server, the
active participant) changes what is trained, so it cannot share the passive run. A scenario that names one runs:

- the passive federation in the run directory itself, audited by the scenario's passive threat models and by each
  deviating one's ``passive_twin`` (so that every active adversary has its honest counterpart of the same seed);
- one federation per deviating threat model in ``RUN_DIR/active/<name>/``, a run directory of its own (its scenario is
  the same with ``audit.threat_models = [<name>]``), with the manipulation on and only that adversary audited.

When both are done, :func:`merge_twin` brings each deviating adversary's results into the run directory: its result
per round into ``rounds.jsonl``, its entry in ``summary.json``'s ``threat_models`` with the comparison with its passive
twin on the same target records (:func:`compare_with_twin`: AUC and TPR at low FPR with intervals, per round and
stacked over the rounds) and what the deviation cost the adversary (test accuracy beside the passive run's, and how
far the models it sent and the updates it received sit from the honest run's, which a deployment that monitors them
could notice).

NumPy only; no TensorFlow.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from fedaudit.threat_model import get_threat_model, ordered

log = logging.getLogger(__name__)

TWINS_DIR = "active"


def deviating(names) -> list[str]:
    """The deviating threat models among ``names``, in the registry's order."""
    return [n for n in ordered(names) if get_threat_model(n).deviation]


def is_twin(scenario) -> bool:
    """Whether the scenario is one deviating adversary's own federation (exactly one threat model, deviating)."""
    tms = list(scenario.audit.threat_models)
    return len(tms) == 1 and get_threat_model(tms[0]).deviation


def chosen_clients(scenario) -> dict:
    """The clients the deviating adversaries single out: ``[audit.active]``'s, else drawn from the seed (the same for
    the federation that deviates and the auditor that scores it)."""
    a, f = scenario.audit.active, scenario.federation
    drawn = [int(v) for v in np.random.default_rng(np.random.SeedSequence([int(f.seed), 4, 21])).integers(0, f.clients, 3)]
    return {key: (int(value) if value >= 0 else drawn[i])
            for i, (key, value) in enumerate((("isolated_client", a.isolated_client), ("participant", a.participant),
                                              ("inconsistent_client", a.inconsistent_client)))}


def audited_here(scenario) -> list[str]:
    """The threat models audited in this scenario's own federation: a twin's one deviating adversary, or the passive
    threat models with each deviating one's passive twin."""
    tms = list(scenario.audit.threat_models)
    if is_twin(scenario):
        return tms
    out = [t for t in tms if not get_threat_model(t).deviation]
    for t in deviating(tms):
        twin = get_threat_model(t).passive_twin
        if twin and twin not in out:
            out.append(twin)
    return ordered(out)


def twin_scenario(scenario, name: str):
    """The scenario of deviating adversary ``name``'s own federation."""
    return scenario.with_overrides({"audit.threat_models": [name], "name": f"{scenario.name}--{name}"})


def twin_dir(run_dir, name: str) -> Path:
    return Path(run_dir) / TWINS_DIR / name


# ---- the comparison with the passive twin ---------------------------------------------------------------------

def _sorted_positions(index: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Positions of the target records (positions into the audit records) in record-index order (aggregated.npz)."""
    return np.searchsorted(np.sort(index), index[targets])


def _summary(scores: np.ndarray, member: np.ndarray) -> dict | None:
    from fedaudit.auditor.results import summary_or_none

    s = summary_or_none(scores[member], scores[~member])
    return None if s is None else _with_auc_ci(s)


def _with_auc_ci(s) -> dict:
    from fedaudit.metrics import auc_interval

    return {**s.to_dict(), "auc_ci": list(auc_interval(s.auc, s.n_members, s.n_nonmembers))}


def _stacked(run_dir: Path, tm: str) -> np.ndarray | None:
    path = run_dir / "audit" / "aggregated.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        key = f"{tm}__stacked"
        return z[key].astype(np.float64) if key in z.files else None


def _round_scores(run_dir: Path, tm: str) -> dict:
    """{round: the headline attack's per-record scores of ``tm`` that round} from the round arrays."""
    from fedaudit.auditor.state import load_round, round_path, saved_rounds
    from fedaudit.schema import RoundLine, round_key

    heads = {}
    for row in _lines(run_dir):
        line = RoundLine.from_dict(row)
        v = line.view(tm)
        if v is not None and v.attack:
            heads[line.round] = v.attack
    out = {}
    for r in saved_rounds(run_dir):
        if r not in heads:
            continue
        data = load_round(round_path(run_dir, r))
        key = round_key(tm, "score", heads[r])
        if key in data:
            out[r] = data[key].astype(np.float64)
    return out


def _scored(run_dir: Path, tm: str, n: int) -> np.ndarray:
    """The mask of records ``tm``'s metrics are on, as its last saved round holds it (every record if none)."""
    from fedaudit.auditor.state import load_round, round_path, saved_rounds
    from fedaudit.schema import round_key

    for r in reversed(saved_rounds(run_dir)):
        data = load_round(round_path(run_dir, r))
        if round_key(tm, "scored") in data:
            return data[round_key(tm, "scored")].astype(bool)
    return np.ones(n, dtype=bool)


def _lines(run_dir: Path) -> list[dict]:
    from fedaudit.rundir import read_jsonl

    return read_jsonl(Path(run_dir) / "rounds.jsonl")


def compare_with_twin(run_dir, name: str) -> dict:
    """Deviating adversary ``name`` beside its passive twin, on the adversary's target records: metrics with
    intervals of the stacked scores (over the rounds) and per round, and the deviation's cost."""
    from fedaudit.auditor.records import AuditRecords
    from fedaudit.metrics import summarize

    run_dir = Path(run_dir)
    tdir = twin_dir(run_dir, name)
    twin = get_threat_model(name).passive_twin
    records = AuditRecords.load(tdir / "audit" / "records.npz")
    targets = np.flatnonzero(_scored(tdir, name, len(records)))     # the records the adversary's metrics are on
    member = records.member[targets]
    out: dict = {"passive_twin": twin, "targets": {"members": int(member.sum()), "nonmembers": int((~member).sum())}}
    pos = _sorted_positions(records.index, targets)
    stacked = {}
    for label, d, tm in (("active", tdir, name), ("passive", run_dir, twin)):
        s = _stacked(d, tm)
        stacked[label] = None if s is None else _summary(s[pos], member)
    out["stacked"] = stacked
    per_round = []
    active_rounds, passive_rounds = _round_scores(tdir, name), _round_scores(run_dir, twin)
    for r in sorted(set(active_rounds) & set(passive_rounds)):
        row = {"round": r}
        for label, scores in (("active", active_rounds[r]), ("passive", passive_rounds[r])):
            s = scores[targets]
            ok = np.isfinite(s)
            row[label] = _with_auc_ci(summarize(s[ok & member], s[ok & ~member])) \
                if (ok & member).any() and (ok & ~member).any() else None
        per_round.append(row)
    out["per_round"] = per_round
    out["cost"] = deviation_cost(run_dir, tdir)
    out["stronger"] = _stronger(stacked, per_round)
    return out


def _stronger(stacked: dict, per_round: list) -> dict:
    """Whether the active adversary beats its passive twin: where its interval lies above the passive one's."""
    out = {}
    for key in ("auc", "tpr_at_1pct"):
        a, p = stacked.get("active") or {}, stacked.get("passive") or {}
        ci_a, ci_p = a.get(key + "_ci"), p.get(key + "_ci")
        out[f"stacked_{key}"] = bool(ci_a and ci_p and ci_a[0] is not None and ci_p[1] is not None
                                     and ci_a[0] > ci_p[1])
        out[f"rounds_above_{key}"] = sum(1 for r in per_round if r["active"] and r["passive"]
                                         and (r["active"].get(key + "_ci") or [None])[0] is not None
                                         and (r["passive"].get(key + "_ci") or [None, None])[1] is not None
                                         and r["active"][key + "_ci"][0] > r["passive"][key + "_ci"][1])
    return out


def deviation_cost(run_dir, tdir) -> dict:
    """What the deviation costs the adversary: the deviating run's test accuracy per round beside the passive run's,
    and (from the lines' ``deviation`` objects) how far the models sent and the updates received sit from the
    honest run's, as a ratio of norms (1: indistinguishable by norm)."""
    from fedaudit.schema import RoundLine

    honest = {RoundLine.from_dict(r).round: RoundLine.from_dict(r) for r in _lines(run_dir)}
    dev = {RoundLine.from_dict(r).round: RoundLine.from_dict(r) for r in _lines(tdir)}
    rounds = sorted(set(honest) & set(dev))
    acc = [(r, dev[r].model_accuracy, honest[r].model_accuracy) for r in rounds]
    sent, upd = [], []
    for r in rounds:
        d, h = dev[r].extra.get("norms") or {}, honest[r].extra.get("norms") or {}
        if d.get("sent") and h.get("sent"):
            sent.append(d["sent"] / h["sent"])
        if d.get("update_median") and h.get("update_median"):
            upd.append(d["update_median"] / h["update_median"])
    last = next(((a, b) for _, a, b in reversed(acc) if a is not None and b is not None), (None, None))
    return {"model_accuracy": {"deviating": last[0], "passive": last[1],
                               "drop": None if None in last else last[1] - last[0]},
            "model_accuracy_per_round": [{"round": r, "deviating": a, "passive": b} for r, a, b in acc],
            "sent_norm_ratio_max": max(sent, key=lambda v: abs(math.log(v)) if v > 0 else math.inf) if sent else None,
            "update_norm_ratio_max": max(upd, key=lambda v: abs(math.log(v)) if v > 0 else math.inf) if upd else None,
            "ruins_the_model": bool(last[0] is not None and last[1] is not None and last[0] < 0.5 * last[1])}


# ---- merging a twin into the run directory ---------------------------------------------------------------------

def merge_twin(run_dir, name: str) -> dict | None:
    """Bring deviating adversary ``name``'s results into the run directory: its per-round results into
    ``rounds.jsonl`` and its summary entry, with the comparison, into ``summary.json``. Idempotent."""
    from fedaudit.auditor.state import merge_round
    from fedaudit.rundir import atomic_write_text, json_safe
    from fedaudit.schema import RoundLine, RunSummary

    run_dir = Path(run_dir)
    tdir = twin_dir(run_dir, name)
    if not (tdir / "summary.json").is_file():
        log.warning("%s: the %s run has no summary; not merged", tdir, name)
        return None
    for row in _lines(tdir):
        line = RoundLine.from_dict(row)
        if line.view(name) is not None:
            merge_round(run_dir, line.round, {name: {**line.view(name).to_dict(),
                                                      "deviation": line.extra.get("deviation")}})
    twin_summary = RunSummary.from_dict(json.loads((tdir / "summary.json").read_text(encoding="utf-8")))
    entry = twin_summary.view(name)
    if entry is None:
        return None
    comparison = compare_with_twin(run_dir, name)
    entry.extra.update({"run_dir": str(tdir.relative_to(run_dir)), "comparison": comparison})
    path = run_dir / "summary.json"
    summary = RunSummary.from_dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else RunSummary()
    summary.threat_models[name] = entry
    summary.threat_models = {tm: summary.threat_models[tm] for tm in ordered(summary.threat_models)}
    atomic_write_text(path, json.dumps(json_safe(summary.to_dict()), indent=2) + "\n")
    return comparison


__all__ = ["TWINS_DIR", "audited_here", "chosen_clients", "compare_with_twin", "deviating", "deviation_cost", "is_twin", "merge_twin",
           "twin_dir", "twin_scenario"]
