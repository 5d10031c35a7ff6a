"""Read a run directory (the files of notes/RUNDIR.md) into plain data for the report.

Every part is optional except the folder itself: a run with the audit off, a run that was killed, or an
auditor that wrote only some files still gives a report, which then says what was not audited.
NumPy only; no TensorFlow.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedaudit.errors import FedAuditError
from fedaudit.rundir import read_jsonl

log = logging.getLogger(__name__)

THREAT_MODELS = ("server", "participant")
THREAT_MODEL_TITLES = {
    "server": "Honest-but-curious server",
    "participant": "Participant (another client)",
}
THREAT_MODEL_DESCRIPTIONS = {
    "server": "the aggregator, who sees every client's model update in every round",
    "participant": "a client of the federation, who sees only the global model of each round",
}
# the server under secure aggregation (summary.json: "secure_aggregation", the server's "view")
AGGREGATE_ONLY_DESCRIPTION = ("the aggregator under secure aggregation, who sees only the sum of the clients' updates "
                              "(the global model) in every round, never one client's update")


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
    rounds: list = field(default_factory=list)
    clients: dict | None = None             # clients.csv columns
    records: dict | None = None             # records.csv columns
    summary: dict = field(default_factory=dict)   # summary.json
    member_probs: np.ndarray | None = None
    nonmember_probs: np.ndarray | None = None
    status: dict = field(default_factory=dict)     # status.json: running, finished, interrupted, failed
    problems: list = field(default_factory=list)  # files (and lines) that were missing or unreadable

    # ---- what was audited -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.scenario.name if self.scenario is not None else self.path.name

    def threat_models(self) -> list[str]:
        """Threat models with any result (summary.json or a round), in the canonical order."""
        found = set((self.summary.get("threat_models") or {}).keys())
        for r in self.rounds:
            found.update(tm for tm in THREAT_MODELS if isinstance(r.get(tm), dict))
        if self.records is not None:
            found.update(tm for tm in THREAT_MODELS
                         if tm in self.records and np.isfinite(_as_float_array(self.records[tm])).any())
        ordered = [tm for tm in THREAT_MODELS if tm in found]
        return ordered + sorted(found - set(ordered))

    @property
    def audited(self) -> bool:
        return bool(self.threat_models())

    def configured_threat_models(self) -> list[str]:
        if self.scenario is not None and self.scenario.audit.enabled:
            return list(self.scenario.audit.threat_models)
        return []

    def headline(self, tm: str) -> tuple[dict | None, str]:
        """(summary dict of the final aggregated risk, where it came from) for a threat model."""
        s = (self.summary.get("threat_models") or {}).get(tm)
        if isinstance(s, dict) and s:
            return s, "all rounds, aggregated"
        for r in reversed(self.rounds):
            obj = r.get(tm)
            if isinstance(obj, dict):
                summ = obj.get("summary") if isinstance(obj.get("summary"), dict) else None
                if summ is None and obj.get("auc") is not None:
                    summ = {k: obj.get(k) for k in ("auc", "tpr_at_1pct", "tpr_at_0_1pct", "accuracy")}
                if summ:
                    return summ, f"round {r.get('round')} only (no aggregated summary.json)"
        return None, ""

    def headline_attack(self, tm: str) -> str | None:
        s = (self.summary.get("threat_models") or {}).get(tm)
        if isinstance(s, dict) and s and isinstance(self.summary.get("attack"), str):
            return self.summary["attack"]
        for r in reversed(self.rounds):
            obj = r.get(tm)
            if isinstance(obj, dict) and obj.get("attack"):
                return str(obj["attack"])
        return None

    def per_round(self, tm: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(rounds, values) of a threat model's per-round metric (``auc``, ``tpr_at_1pct``, ...)."""
        xs, ys = [], []
        for r in self.rounds:
            obj = r.get(tm)
            if not isinstance(obj, dict):
                continue
            value = obj.get(key)
            if value is None and isinstance(obj.get("summary"), dict):
                value = obj["summary"].get(key)
            xs.append(r.get("round"))
            ys.append(_float(value))
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    def per_round_ci(self, tm: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, lo, hi = [], [], []
        for r in self.rounds:
            obj = r.get(tm)
            if not isinstance(obj, dict) or not isinstance(obj.get("summary"), dict):
                continue
            ci = obj["summary"].get(key + "_ci") or [None, None]
            xs.append(r.get("round"))
            lo.append(_float(ci[0]))
            hi.append(_float(ci[1]))
        return (np.asarray(xs, dtype=np.float64), np.asarray(lo, dtype=np.float64),
                np.asarray(hi, dtype=np.float64))

    def utility(self, key: str = "accuracy") -> tuple[np.ndarray, np.ndarray]:
        xs = [r.get("round") for r in self.rounds if "round" in r]
        ys = [_float(r.get(key)) for r in self.rounds if "round" in r]
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    @property
    def final_accuracy(self) -> float:
        _, acc = self.utility("accuracy")
        finite = acc[np.isfinite(acc)]
        return float(finite[-1]) if finite.size else math.nan

    @property
    def rounds_done(self) -> int:
        return max((int(r["round"]) for r in self.rounds if isinstance(r.get("round"), int)), default=0)

    def recorded_rounds(self) -> list[int]:
        """The distinct rounds rounds.jsonl holds an intact line for, sorted."""
        return sorted({int(r["round"]) for r in self.rounds
                       if isinstance(r.get("round"), int) and not isinstance(r.get("round"), bool)})

    def missing_rounds(self) -> list[int]:
        """Rounds up to the last recorded one (or the configured number) with no intact line."""
        recorded = set(self.recorded_rounds())
        last = max(recorded, default=0)
        if self.scenario is not None and self.status.get("state") == "finished":
            last = max(last, self.scenario.federation.rounds)
        return [r for r in range(1, last + 1) if r not in recorded]

    def client_rounds(self, tm: str = "server", key: str = "auc") -> tuple[list, list, np.ndarray]:
        """(rounds, clients, matrix[client, round]) of per-client per-round metrics (NaN where absent)."""
        table: dict = {}
        rounds = []
        for r in self.rounds:
            obj = r.get(tm)
            if not isinstance(obj, dict) or not isinstance(obj.get("clients"), list):
                continue
            rounds.append(r.get("round"))
            for c in obj["clients"]:
                if isinstance(c, dict) and "client" in c:
                    table.setdefault(int(c["client"]), {})[r.get("round")] = _float(c.get(key))
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
        """(members', non-members' membership probability): the .npy files, else records.csv's risk."""
        if self.member_probs is not None and self.nonmember_probs is not None \
                and self.member_probs.size and self.nonmember_probs.size:
            return self.member_probs, self.nonmember_probs
        return self.scores("risk")

    def source_inference(self) -> dict | None:
        """{"accuracy", "chance"} of attributing members to their client (server view), if audited (never under
        secure aggregation: the server has no client's model to attribute a record to)."""
        if self.aggregate_only:
            return None
        si = self.summary.get("source_inference")
        if isinstance(si, dict) and si.get("accuracy") is not None:
            return si
        for r in reversed(self.rounds):
            obj = r.get("server")
            if isinstance(obj, dict) and isinstance(obj.get("source_inference"), dict):
                si = dict(obj["source_inference"])
                si["round"] = r.get("round")
                return si
        return None

    @property
    def aggregate_only(self) -> bool:
        """Secure aggregation: the server saw the sum of the updates only (its view is the aggregate-only attack)."""
        if isinstance(self.summary.get("secure_aggregation"), dict):
            return True
        f = getattr(self.scenario, "federation", None)
        return bool(getattr(f, "secure_aggregation", False))

    def describe(self, tm: str) -> str:
        """Who the adversary of threat model ``tm`` is, in this run."""
        if tm == "server" and self.aggregate_only:
            return AGGREGATE_ONLY_DESCRIPTION
        return THREAT_MODEL_DESCRIPTIONS.get(tm, "")

    @property
    def dp(self) -> dict | None:
        dp = self.summary.get("dp")
        if isinstance(dp, dict):
            return dp
        return None

    @property
    def dp_mode(self) -> str:
        if self.dp and self.dp.get("mode"):
            return str(self.dp["mode"])
        return self.scenario.dp.mode if self.scenario is not None else "none"


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
    run.rounds = read_jsonl(path / "rounds.jsonl", problems=run.problems)
    for name, attr in (("clients.csv", "clients"), ("records.csv", "records")):
        try:
            setattr(run, attr, read_csv_table(path / name, run.problems))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            _problem(run, path / name, f"unreadable ({exc})")
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
            if not isinstance(summary, dict):
                raise ValueError(f"a JSON {type(summary).__name__}, not an object")
            run.summary = summary
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            _problem(run, path / "summary.json", f"unreadable ({exc})")
    run.member_probs = _load_npy(path / "member_probs.npy", run.problems)
    run.nonmember_probs = _load_npy(path / "nonmember_probs.npy", run.problems)
    from fedaudit.runstate import read_status

    run.status = read_status(path, run.problems)
    return run


def _problem(run: RunData, path: Path, what: str) -> None:
    log.warning("%s: %s", path, what)
    run.problems.append(f"{path.name}: {what}")


__all__ = ["RunData", "load_run", "read_csv_table", "THREAT_MODELS", "THREAT_MODEL_TITLES", "AGGREGATE_ONLY_DESCRIPTION",
           "THREAT_MODEL_DESCRIPTIONS"]
