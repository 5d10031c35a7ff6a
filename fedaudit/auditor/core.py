"""AuditCore: attack one round as the server and as a participant; write its results at once.

Plain Python (the Ray actor in :mod:`fedaudit.auditor.actor` wraps it; tests call it directly). For round t
it receives theta_prev (the global weights sent out), each replying client's theta_k and the new global
theta_t, and for each threat model in ``[audit] threat_models``:

- ``server`` sees every theta_k and theta_prev: for every audited record and every client k, the features of
  theta_k relative to theta_prev (:mod:`fedaudit.auditor.features`); a record is scored against the update of
  its owner (a population record against its seeded pseudo-owner's, see :mod:`fedaudit.auditor.records`), and
  client k's metrics compare k's members with every population record under theta_k. Source inference
  attributes each member to the client whose model gives it the lowest loss;
- ``participant`` sees the global models: the features of theta_t relative to theta_prev.

Each configured attack is cross-fitted (:mod:`fedaudit.auditor.attack`), except the attacks with reference
models (``reference``, ``lira*``, ``rmia*``, with ``[audit] reference_models >= 2``): their reference models are
trained (or loaded from the cache) once, at the first round this instance audits, and each round only the
targets' logits are new (:mod:`fedaudit.auditor.references`). The round's arrays go to
``audit/round_NNNN.npz`` first, then its metrics are merged into its line of ``rounds.jsonl``; a round whose
line already holds every threat model is never audited again, so a restarted auditor neither loses nor
double-counts a round. A client whose weights (or outputs) are not finite is flagged in
``non_finite_clients`` and left out of the attack; a failed client simply is not among the replies.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedaudit.auditor.attack import (FITTED, NOT_PER_ROUND, REFERENCE, RUNNABLE, THRESHOLD, cross_fit, headline,
                                     population_scores)
from fedaudit.auditor.records import AuditRecords, audit_records
from fedaudit.auditor.state import SEP, AUDIT_DIR, audited_rounds, merge_round, save_round
from fedaudit.config import Scenario
from fedaudit.metrics import summarize
from fedaudit.rundir import upsert_jsonl

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


class AuditCore:
    """The adversary of one run. ``x``, ``y`` are the audited records, aligned with ``records``."""

    def __init__(self, run_dir, scenario: Scenario, records: AuditRecords, x, y, *, input_shape=None,
                 num_classes: int | None = None):
        from fedaudit.auditor.features import ModelProbe

        self.run_dir = Path(run_dir)
        self.scenario = scenario
        self.records = records
        a = scenario.audit
        self.threat_models = list(a.threat_models)
        self.attacks, self.skipped_attacks = audit_attacks(a.attacks, a.reference_models)
        self.headline = headline(self.attacks)
        self.seed = scenario.federation.seed
        x = np.asarray(x, dtype=np.float32)
        num_classes = int(num_classes if num_classes is not None else int(np.max(y)) + 1)
        self.num_classes = num_classes
        # reference models: trained (or loaded from the cache) at the first round this instance audits
        self.reference_attacks = [n for n in self.attacks if n in REFERENCE]
        self.references = None
        self._reference_data = (x, np.asarray(y, dtype=np.int64)) if self.reference_attacks else None
        self.probe = ModelProbe(scenario.model.name, scenario.model.options, input_shape or x.shape[1:],
                                num_classes, x, y, gradients=a.gradients, seed=self.seed)
        self.feature_names = self.probe.feature_names
        self.bb = self.probe.blackbox_columns
        path = self.run_dir / AUDIT_DIR / "records.npz"
        if not path.exists():
            records.save(path)

    @classmethod
    def from_dataset(cls, run_dir, scenario: Scenario, x, y, owner, num_clients: int) -> "AuditCore":
        records = audit_records(owner, y, num_clients, folds=scenario.audit.folds,
                                attack_fraction=scenario.audit.attack_fraction, seed=scenario.federation.seed)
        return cls(run_dir, scenario, records, np.asarray(x)[records.index], np.asarray(y)[records.index],
                   num_classes=int(np.max(y)) + 1)

    # ------------------------------------------------------------------------------------------------

    def done(self) -> set[int]:
        return audited_rounds(self.run_dir, self.threat_models)

    def observe(self, round_: int, previous, clients: dict, new, record: dict | None = None) -> dict | None:
        """Audit one round; a no-op (None) if the round is already written. Returns the merged fields."""
        round_ = int(round_)
        if round_ in self.done():
            log.info("round %d already audited; skipping", round_)
            return None
        started = time.perf_counter()
        timing = Timing()
        from fedaudit.auditor.features import all_finite

        finite = {int(k): w for k, w in clients.items() if all_finite(w)}
        non_finite = sorted(int(k) for k in clients if int(k) not in finite)
        out: dict = {}
        arrays: dict = {"round": np.int64(round_), "feature_names": np.array(self.feature_names)}
        if self.reference_attacks and self.references is None:
            with timing.phase("references"):
                self._prepare_references()
        if self.references is not None:
            out["reference_models"] = self.references.info
        base = None
        prev_ok = all_finite(previous)
        if prev_ok:
            with timing.phase("signals"):
                base = self.probe.base(previous)
        if "server" in self.threat_models:
            out["server"] = self._server(finite, non_finite, previous if prev_ok else None, base, arrays, timing)
        if "participant" in self.threat_models:
            out["participant"] = self._participant(new, previous if prev_ok else None, base, arrays, timing)
        out["non_finite_clients"] = non_finite
        if self.skipped_attacks:
            out["skipped_attacks"] = self.skipped_attacks
        with timing.phase("io"):
            save_round(self.run_dir, round_, arrays)
        timing.seconds["total"] = time.perf_counter() - started
        upsert_jsonl(self.run_dir / AUDIT_DIR / "timing.jsonl",
                     {"round": round_, **{k: round(v, 4) for k, v in timing.seconds.items()}})
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
                online=any(is_online(n) for n in self.reference_attacks),
                cache_dir=cache_dir_for(self.run_dir))
        except Exception as exc:  # noqa: BLE001 - the other attacks still run
            log.exception("reference models failed; skipping %s", self.reference_attacks)
            for n in self.reference_attacks:
                self.skipped_attacks[n] = f"reference models failed: {exc!r}"
            self.attacks = [n for n in self.attacks if n not in self.reference_attacks] or ["loss"]
            self.headline = headline(self.attacks)
            self.reference_attacks = []
        self._reference_data = None

    def _score(self, fit_rows, score_rows, logits, loss) -> dict:
        r = self.records
        member = r.member
        scores = {}
        for name in self.attacks:
            if name == "loss":
                scores[name] = -loss
            elif name in THRESHOLD:
                scores[name] = threshold_scores(name, logits, r.label)
            elif name == "population":
                scores[name] = population_scores(logits, r.label, member, r.fold, r.known)
            elif name in FITTED:
                cols = slice(None) if name == "whitebox" else self.bb
                scores[name] = cross_fit(fit_rows[:, cols], member, r.fold, r.known, score_rows[..., cols])
            elif name in REFERENCE and self.references is not None:
                scores[name] = self.references.scores(name, logits)
        return scores

    def _view_result(self, record_scores: dict, per_client_scores) -> dict:
        """The threat model's JSON: headline, every attack's summary, per-client headline metrics."""
        member = self.records.member
        summaries = {a: summary_or_none(s[member], s[~member]) for a, s in record_scores.items()}
        head = summaries[self.headline]
        result = {"attack": self.headline, **headline_fields(head),
                  "summary": head.to_dict() if head is not None else None,
                  "attacks": {a: (s.to_dict() if s is not None else None) for a, s in summaries.items()},
                  "clients": []}
        owner = self.records.owner
        for k, (ms, ns) in per_client_scores:
            result["clients"].append({"client": int(k), "records": int(np.sum(owner == k)), **light_metrics(ms, ns)})
        return result

    def _server(self, finite, non_finite, previous, base, arrays, timing) -> dict:
        r = self.records
        n, K = len(r), r.num_clients
        F = len(self.feature_names)
        if not finite or previous is None:
            reason = "no client returned finite weights" if not finite else "theta_prev is not finite"
            return {"attack": self.headline, **headline_fields(None), "skipped": reason, "clients": []}
        feats = np.full((n, K, F), np.nan, dtype=np.float32)
        loss = np.full((n, K), np.nan)
        correct = np.zeros((n, K), dtype=bool)
        logits = np.full((n, K, self.probe.model.output_shape[-1]), np.nan, dtype=np.float32)
        audited = []
        with timing.phase("signals"):
            for k in sorted(finite):
                v = self.probe.view(finite[k], base, previous)
                if not np.isfinite(v.logits).all():
                    non_finite.append(k)     # finite weights, but outputs overflow: flag and leave out
                    continue
                feats[:, k], loss[:, k], correct[:, k], logits[:, k] = v.features, v.loss, v.correct, v.logits
                audited.append(k)
        non_finite.sort()
        if not audited:
            return {"attack": self.headline, **headline_fields(None), "skipped": "no client returned finite outputs",
                    "clients": []}
        rows = np.arange(n)
        with timing.phase("attacks"):
            pair = self._score(feats[rows, r.source], feats, logits, loss)
            record_scores = {a: s[rows, r.source] for a, s in pair.items()}
            h = pair[self.headline]
            pop = ~r.member
            per_client = [(k, (h[r.owner == k, k], h[pop, k])) for k in audited]
            result = self._view_result(record_scores, per_client)
            result["clients_audited"] = audited
            result["source_inference"] = source_inference(loss, r.owner, audited)
        arrays["server" + SEP + "clients"] = np.array(audited, dtype=np.int64)
        arrays["server" + SEP + "features"] = feats
        arrays["server" + SEP + "loss"] = loss.astype(np.float32)
        arrays["server" + SEP + "correct"] = correct
        for a, s in pair.items():
            arrays["server" + SEP + "score" + SEP + a] = s.astype(np.float32)
        return result

    def _participant(self, new, previous, base, arrays, timing) -> dict:
        from fedaudit.auditor.features import all_finite

        r = self.records
        if new is None or not all_finite(new):
            reason = "no global model this round" if new is None else "the global model is not finite"
            return {"attack": self.headline, **headline_fields(None), "skipped": reason, "clients": []}
        with timing.phase("signals"):
            v = self.probe.view(new, base, previous)
        if not np.isfinite(v.logits).all():
            return {"attack": self.headline, **headline_fields(None),
                    "skipped": "the global model's outputs are not finite", "clients": []}
        with timing.phase("attacks"):
            scores = self._score(v.features, v.features, v.logits, v.loss)
            h = scores[self.headline]
            pop = ~r.member
            per_client = [(k, (h[r.owner == k], h[pop])) for k in range(r.num_clients) if np.any(r.owner == k)]
            result = self._view_result(scores, per_client)
        arrays["participant" + SEP + "features"] = v.features
        arrays["participant" + SEP + "loss"] = v.loss.astype(np.float32)
        arrays["participant" + SEP + "correct"] = v.correct
        for a, s in scores.items():
            arrays["participant" + SEP + "score" + SEP + a] = s.astype(np.float32)
        return result


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


def source_inference(loss: np.ndarray, owner: np.ndarray, clients) -> dict:
    """Attribute every member whose owner replied to the client whose model gives it the lowest loss.

    ``loss``: (n, K) with NaN for clients that did not reply. Returns accuracy, chance (1/replying clients)
    and the number of members attributed.
    """
    clients = list(clients)
    sel = (owner >= 0) & np.isin(owner, clients)
    if not sel.any() or not clients:
        return {"accuracy": None, "chance": (1.0 / len(clients)) if clients else None, "records": 0}
    l = np.where(np.isnan(loss[sel]), np.inf, loss[sel])
    attributed = np.argmin(l, axis=1)
    acc = float(np.mean(attributed == owner[sel]))
    return {"accuracy": acc, "chance": 1.0 / len(clients), "records": int(sel.sum())}


__all__ = ["AuditCore", "Timing", "audit_attacks", "light_metrics", "source_inference", "summary_or_none"]
