"""Read a run directory (its files are described by :mod:`fedaudit.schema`) into typed data for the report.

Every part is optional except the folder itself: a run with the audit off, a run that was killed, or an
auditor that wrote only some files still gives a report, which then says what was not audited. The threat
models' names, titles and descriptions come from the registry (:mod:`fedaudit.threat_model`): a threat model
registered there appears in the report without changes here. NumPy only; no TensorFlow.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedaudit.errors import FedAuditError
from fedaudit.schema import (DpSummary, PrivacyEstimate, RoundLine, RunStatus, RunSummary, ViewResult, ViewSummary,
                             read_rounds, read_status, read_summary)
from fedaudit.threat_model import ThreatModel, ordered, threat_models as registered_threat_models

log = logging.getLogger(__name__)


# ---- the registry, for names that may not be registered in this process ----------------------------------------

def threat_model(tm: str) -> ThreatModel | None:
    """The registered threat model ``tm`` (None: a name in a run directory this process does not know)."""
    return registered_threat_models().get(tm)


def tm_title(tm: str) -> str:
    m = threat_model(tm)
    return m.title if m is not None and m.title else tm


def tm_noun(tm: str) -> str:
    """The adversary as the subject of a sentence ("the honest-but-curious server")."""
    m = threat_model(tm)
    return m.noun if m is not None and m.noun else f"the {tm} adversary"


def tm_possessive(tm: str) -> str:
    m = threat_model(tm)
    return m.possessive if m is not None and m.possessive else f"{tm}'s"


def tm_against(tm: str) -> str:
    m = threat_model(tm)
    return m.against if m is not None and m.against else f"Against {tm}"


def tm_color(tm: str) -> str | None:
    m = threat_model(tm)
    return m.color if m is not None else None


def per_client_models(tm: str) -> bool:
    """Whether the adversary observes each client's own model (per-client results, source inference)."""
    m = threat_model(tm)
    return bool(m is not None and m.per_client_models)


def _float(value) -> float:
    """A CSV/JSON cell as a float (empty, None or unparsable: NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    value = str(value).strip()
    if not value:
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


def read_csv_table(path: Path, problems: list | None = None) -> dict[str, np.ndarray] | None:
    """A CSV file with a header as columns: numbers as float arrays (empty cells NaN), None if absent.

    A row with more or fewer cells than the header is kept, its missing cells empty; a last line without its
    newline (every file of a run dir ends with one, so the file was cut short) is left out. Both are named,
    with the line, in a warning and in ``problems``."""
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return None

    def problem(line: int, what: str) -> None:
        log.warning("%s line %d: %s", path, line, what)
        if problems is not None:
            problems.append(f"{path.name} line {line}: {what}")

    rows = []
    for r in reader:
        if not r:
            continue
        rows.append((reader.line_num, r))
    if rows and not text.endswith("\n"):
        line, _ = rows.pop()
        problem(line, "the file ends inside this line (cut short); left out")
    for line, r in rows:
        if len(r) != len(header):
            problem(line, f"{len(r)} cells where the header has {len(header)}; read as far as it goes")
    rows = [r for _, r in rows]
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        cells = [r[j] if j < len(r) else "" for r in rows]
        values = np.array([_float(c) for c in cells], dtype=np.float64)
        bad = np.isnan(values) & np.array([bool(c.strip()) for c in cells], dtype=bool)
        columns[name] = np.array(cells, dtype=object) if bad.any() else values
    return columns


def _load_npy(path: Path, problems: list | None = None) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64).reshape(-1)
    except (ValueError, OSError, EOFError, TypeError) as exc:
        log.warning("%s: unreadable (%s); left out of the report", path, exc)
        if problems is not None:
            problems.append(f"{path.name}: unreadable ({exc}); left out")
        return None


@dataclass
class RunData:
    """Everything the report shows, read from one run directory."""

    path: Path
    scenario: object = None                 # fedaudit.config.Scenario, or None if scenario.toml is missing/bad
    scenario_error: str | None = None
    ledger: dict | None = None              # Ledger.summary()
    rounds: list[RoundLine] = field(default_factory=list)       # rounds.jsonl's intact lines
    clients: dict | None = None             # clients.csv columns
    records: dict | None = None             # records.csv columns
    summary: RunSummary = field(default_factory=RunSummary)   # summary.json (empty if absent or unreadable)
    member_probs: np.ndarray | None = None
    nonmember_probs: np.ndarray | None = None
    status: RunStatus = field(default_factory=RunStatus)       # status.json: running, finished, interrupted, failed
    problems: list = field(default_factory=list)  # files (and lines) that were missing or unreadable

    # ---- what was audited -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.scenario.name if self.scenario is not None else self.path.name

    def threat_models(self) -> list[str]:
        """Threat models with any result (summary.json, a round, or records.csv's scores), strongest first."""
        found = set(self.summary.threat_models)
        for line in self.rounds:
            found.update(line.views)
        if self.records is not None:
            found.update(tm for tm in registered_threat_models()
                         if tm in self.records and np.isfinite(_as_float_array(self.records[tm])).any())
        return ordered(found)

    @property
    def audited(self) -> bool:
        return bool(self.threat_models())

    def audit_errors(self) -> list[tuple[int, str]]:
        """[(round, error)] of the rounds whose audit failed (rounds.jsonl's ``audit_error``: the round trained,
        the auditor raised, and no later attempt audited it)."""
        return [(line.round, str(line.extra["audit_error"])) for line in self.rounds if line.audit_failed]

    def configured_threat_models(self) -> list[str]:
        if self.scenario is not None and self.scenario.audit.enabled:
            return list(self.scenario.audit.threat_models)
        return []

    def views(self, tm: str) -> list[tuple[int, ViewResult]]:
        """[(round, the threat model's result in that round)], in the order of rounds.jsonl."""
        return [(line.round, line.views[tm]) for line in self.rounds if tm in line.views]

    def headline(self, tm: str) -> tuple[ViewSummary | None, str]:
        """(the threat model's final aggregated result, where it came from): summary.json's, else the last
        round's."""
        s = self.summary.view(tm)
        if s is not None and s.metrics:
            return s, "all rounds, aggregated"
        for round_, view in reversed(self.views(tm)):
            if view.summary:
                summ = ViewSummary.from_dict(view.summary)
            elif view.auc is not None:
                summ = ViewSummary(metrics=view.headline_numbers())
            else:
                continue
            summ.attack = view.attack
            summ.low_fpr_attack, summ.low_fpr = view.low_fpr_attack, view.low_fpr
            return summ, f"round {round_} only (no aggregated summary.json)"
        return None, ""

    def low_fpr(self, tm: str) -> tuple[dict | None, str | None]:
        """(the metrics reported at 1% FPR, the attack they are of): those of the attack chosen on the known records
        for that rate where the run recorded one, else the headline's (attack None: older run directories)."""
        headline, _ = self.headline(tm)
        if headline is None:
            return None, None
        if headline.low_fpr and headline.low_fpr_attack:
            return headline.low_fpr, headline.low_fpr_attack
        return headline.metrics, None

    def headline_attack(self, tm: str) -> str | None:
        s = self.summary.view(tm)
        if s is not None and s.metrics and isinstance(self.summary.attack, str):
            return self.summary.attack
        for _, view in reversed(self.views(tm)):
            if view.attack:
                return str(view.attack)
        return None

    def per_round(self, tm: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(rounds, values) of a threat model's per-round metric (``auc``, ``tpr_at_1pct``, ...)."""
        pairs = [(r, _float(view.value(key))) for r, view in self.views(tm)]
        return (np.asarray([p[0] for p in pairs], dtype=np.float64), np.asarray([p[1] for p in pairs],
                                                                                 dtype=np.float64))

    def per_round_ci(self, tm: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, lo, hi = [], [], []
        for r, view in self.views(tm):
            if not view.summary:
                continue
            low, high = view.interval(key)
            xs.append(r)
            lo.append(_float(low))
            hi.append(_float(high))
        return (np.asarray(xs, dtype=np.float64), np.asarray(lo, dtype=np.float64),
                np.asarray(hi, dtype=np.float64))

    def per_round_auc_se(self, tm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rounds, AUCs, their standard errors) of a threat model; the error is NaN where a round's summary does not
        say how many members and non-members its attack scored."""
        from fedaudit.metrics import auc_standard_error

        xs, ys, ses = [], [], []
        for r, view in self.views(tm):
            auc = _float(view.value("auc"))
            summ = view.summary if isinstance(view.summary, dict) else {}
            xs.append(r)
            ys.append(auc)
            ses.append(auc_standard_error(auc, _float(summ.get("n_members")), _float(summ.get("n_nonmembers"))))
        return tuple(np.asarray(v, dtype=np.float64) for v in (xs, ys, ses))

    def utility(self, key: str = "model_accuracy") -> tuple[np.ndarray, np.ndarray]:
        """(rounds, values) of a round line's utility field (``model_accuracy``, ``loss``, ``train_loss``)."""
        xs = [line.round for line in self.rounds]
        ys = [_float(getattr(line, key) if key in _ROUND_FIELDS else line.extra.get(key)) for line in self.rounds]
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    @property
    def final_accuracy(self) -> float:
        """The global model's test accuracy in the last round that has one."""
        _, acc = self.utility("model_accuracy")
        finite = acc[np.isfinite(acc)]
        return float(finite[-1]) if finite.size else math.nan

    @property
    def rounds_done(self) -> int:
        return max((line.round for line in self.rounds), default=0)

    def recorded_rounds(self) -> list[int]:
        """The distinct rounds rounds.jsonl holds an intact line for, sorted."""
        return sorted({line.round for line in self.rounds})

    def missing_rounds(self) -> list[int]:
        """Rounds up to the last recorded one (or the configured number) with no intact line."""
        recorded = set(self.recorded_rounds())
        last = max(recorded, default=0)
        if self.scenario is not None and self.status.finished:
            last = max(last, self.scenario.federation.rounds)
        return [r for r in range(1, last + 1) if r not in recorded]

    def per_client_threat_model(self) -> str | None:
        """The threat model whose per-client results the report shows: the strongest audited one that observes each
        client's own model, one that follows the protocol before one that deviates from it (None: no such threat
        model was audited)."""
        candidates = [tm for tm in self.threat_models() if per_client_models(tm)]
        candidates.sort(key=lambda tm: bool(getattr(threat_model(tm), "deviation", False)))
        return candidates[0] if candidates else None

    def client_rounds(self, tm: str | None = None, key: str = "auc") -> tuple[list, list, np.ndarray]:
        """(rounds, clients, matrix[client, round]) of per-client per-round metrics (NaN where absent); ``tm``: the
        per-client threat model by default."""
        tm = tm or self.per_client_threat_model()
        table: dict = {}
        rounds = []
        for r, view in self.views(tm) if tm else []:
            if not view.clients:
                continue
            rounds.append(r)
            for c in view.clients:
                value = getattr(c, key) if key in _CLIENT_FIELDS else c.extra.get(key)
                table.setdefault(c.client, {})[r] = _float(value)
        clients = sorted(table)
        matrix = np.full((len(clients), len(rounds)), np.nan)
        for i, c in enumerate(clients):
            for j, rd in enumerate(rounds):
                matrix[i, j] = table[c].get(rd, np.nan)
        return rounds, clients, matrix

    # ---- scores ---------------------------------------------------------------------------------------

    def scores(self, column: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(member scores, non-member scores) of a records.csv column, finite values only."""
        if self.records is None or column not in self.records or "member" not in self.records:
            return None
        values = _as_float_array(self.records[column])
        member = _as_float_array(self.records["member"])
        ok = np.isfinite(values) & np.isfinite(member)
        m, n = values[ok & (member == 1)], values[ok & (member == 0)]
        if m.size == 0 or n.size == 0:
            return None
        return m, n

    def risk_probs(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(members', non-members' membership probability), finite values only: the .npy files, else records.csv's
        risk. A member whose client was never sampled has no probability (NaN: no model saw it), as in the
        metrics; with client sampling over thousands of clients that is most members."""
        if self.member_probs is not None and self.nonmember_probs is not None:
            m, n = (np.asarray(v, float) for v in (self.member_probs, self.nonmember_probs))
            m, n = m[np.isfinite(m)], n[np.isfinite(n)]
            if m.size and n.size:
                return m, n
        return self.scores("risk")

    def source_inference(self) -> dict | None:
        """{"accuracy", "chance"} of attributing members to their client, if audited: summary.json's, else the last
        round's of a threat model that has one (never under secure aggregation: no client's model is seen to
        attribute a record to)."""
        if self.aggregate_only:
            return None
        si = self.summary.source_inference
        if isinstance(si, dict) and si.get("accuracy") is not None:
            return si
        tms = self.threat_models()
        for line in reversed(self.rounds):
            for tm in tms:
                view = line.views.get(tm)
                if view is not None and isinstance(view.source_inference, dict):
                    return {**view.source_inference, "round": line.round}
        return None

    @property
    def aggregate_only(self) -> bool:
        """Secure aggregation: the server saw the sum of the updates only (its view is the aggregate-only attack)."""
        if isinstance(self.summary.secure_aggregation, dict):
            return True
        f = getattr(self.scenario, "federation", None)
        return bool(getattr(f, "secure_aggregation", False))

    def sees_sum_only(self, tm: str) -> bool:
        """Whether secure aggregation changed what threat model ``tm`` observes in this run (it saw the sum of the
        updates where it would have seen each one)."""
        if not self.aggregate_only:
            return False
        m = threat_model(tm)
        s = self.summary.view(tm)
        return bool((m is not None and m.secure_aggregation_description) or (s is not None and s.view))

    def describe(self, tm: str) -> str:
        """Who the adversary of threat model ``tm`` is, in this run."""
        m = threat_model(tm)
        return m.describe(self.aggregate_only) if m is not None else ""

    @property
    def dp(self) -> DpSummary | None:
        """summary.json's ``dp`` object (None: absent or empty)."""
        return self.summary.dp_summary() if self.summary.dp else None

    def privacy(self, tm: str | None) -> PrivacyEstimate | None:
        """Threat model ``tm``'s entry of summary.json's ``privacy`` object (see :mod:`fedaudit.privacy`)."""
        return self.summary.privacy_of(tm) if tm else None

    @property
    def dp_mode(self) -> str:
        dp = self.dp
        if dp is not None and dp.mode:
            return str(dp.mode)
        return self.scenario.dp.mode if self.scenario is not None else "none"


_ROUND_FIELDS = {"model_accuracy", "loss", "train_loss", "wall_seconds", "audit_seconds"}
_CLIENT_FIELDS = {"records", "auc", "tpr_at_1pct", "tpr_at_0_1pct", "attack_accuracy"}


def _as_float_array(values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == object:
        return np.array([_float(v) for v in arr], dtype=np.float64)
    return arr.astype(np.float64)


def load_run(run_dir) -> RunData:
    """Read whatever of the run-dir files exist; raise FedAuditError only if the folder is not a run."""
    from fedaudit.config import load_scenario

    path = Path(run_dir)
    if not path.is_dir():
        raise FedAuditError(f"{path}: no such run directory (expected the folder that `fedaudit run` wrote)")
    markers = ("scenario.toml", "rounds.jsonl", "summary.json")
    if not any((path / m).exists() for m in markers):
        raise FedAuditError(f"{path}: not a run directory: it has none of {', '.join(markers)}")
    run = RunData(path=path)
    if (path / "scenario.toml").is_file():
        try:
            run.scenario = load_scenario(path / "scenario.toml", run_dir_file=True)
        except FedAuditError as exc:
            run.scenario_error = str(exc)
            run.problems.append(f"scenario.toml: {exc}")
    if (path / "ledger.npz").is_file():
        try:
            from fedaudit.data import Ledger

            run.ledger = Ledger.load(path / "ledger.npz").summary()
        except FedAuditError as exc:
            _problem(run, path / "ledger.npz", str(exc))
    elif (path / "scenario.toml").is_file():
        _problem(run, path / "ledger.npz", "missing: which record was a member of which client is unknown")
    run.rounds = read_rounds(path / "rounds.jsonl", run.problems)
    for name, attr in (("clients.csv", "clients"), ("records.csv", "records")):
        try:
            setattr(run, attr, read_csv_table(path / name, run.problems))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            _problem(run, path / name, f"unreadable ({exc})")
    run.summary = read_summary(path / "summary.json", run.problems) or RunSummary()
    run.member_probs = _load_npy(path / "member_probs.npy", run.problems)
    run.nonmember_probs = _load_npy(path / "nonmember_probs.npy", run.problems)
    run.status = read_status(path, run.problems)
    return run


def _problem(run: RunData, path: Path, what: str) -> None:
    log.warning("%s: %s", path, what)
    run.problems.append(f"{path.name}: {what}")


__all__ = ["RunData", "load_run", "per_client_models", "read_csv_table", "threat_model", "tm_against", "tm_color",
           "tm_noun", "tm_possessive", "tm_title"]
