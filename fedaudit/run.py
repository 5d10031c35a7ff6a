"""One scenario end to end: check the inputs, run the federation (audited when asked), report; or resume a run
that was interrupted or killed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedaudit.config import Scenario
from fedaudit.errors import ConfigError, FedAuditError
from fedaudit.interrupt import Interrupted
from fedaudit.rundir import new_run_dir

log = logging.getLogger(__name__)


def resolve_run_dir(scenario: Scenario, out: str | Path | None) -> Path:
    if out is None:
        return new_run_dir("runs", scenario.name)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: already exists and is not an empty folder; name a new or empty folder "
                          f"(or continue a stopped run with: fedaudit run --resume {out})")
    return out


def run_scenario(scenario: Scenario, out: str | Path | None = None, progress: bool = True,
                 report: bool = True) -> Path:
    """Run ``scenario`` and return its run directory. Nothing is written before the inputs are checked."""
    from fedaudit.federation.driver import prepare, write_inputs
    from fedaudit.runstate import RunLock

    run_dir = resolve_run_dir(scenario, out)
    prepared = prepare(scenario)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        write_inputs(run_dir, prepared)
        _execute(prepared, run_dir, progress=progress, report=report, resumed=False)
    return run_dir


def resume_run(run_dir: str | Path, progress: bool = True, report: bool = True) -> Path:
    """Continue the run in ``run_dir`` after its last complete round (see :mod:`fedaudit.runstate`)."""
    from fedaudit.federation.driver import prepare
    from fedaudit.runstate import RunLock

    run_dir = Path(run_dir)
    scenario = check_resumable(run_dir)
    prepared = prepare(scenario)
    with RunLock(run_dir):
        scenario = check_resumable(run_dir)          # again, now that no other process can start on it
        _check_same_ledger(run_dir, prepared)
        _drop_retired_keys(run_dir, scenario)
        start, weights, state = _resume_point(run_dir, scenario)
        log.warning("%s: resuming after round %d of %d", run_dir, start, scenario.federation.rounds)
        _execute(prepared, run_dir, progress=progress, report=report, resumed=True, start=start, weights=weights,
                 state=state)
    return run_dir


def check_resumable(run_dir: Path) -> Scenario:
    """The scenario of a run directory that can be resumed; one FedAuditError line otherwise."""
    from fedaudit.config import load_scenario
    from fedaudit.runstate import read_status

    if not run_dir.is_dir():
        raise FedAuditError(f"--resume {run_dir}: no such run directory")
    missing = [name for name in ("scenario.toml", "ledger.npz") if not (run_dir / name).is_file()]
    if missing:
        raise FedAuditError(f"--resume {run_dir}: not a run directory of `fedaudit run` (it has no "
                            f"{' and no '.join(missing)})")
    scenario = load_scenario(run_dir / "scenario.toml", run_dir_file=True)
    status = read_status(run_dir)
    if status.finished or (status.state is None and _looks_finished(run_dir, scenario)):
        raise FedAuditError(f"--resume {run_dir}: this run finished all {scenario.federation.rounds} rounds; "
                            f"there is nothing to resume (rebuild its report with: fedaudit report {run_dir})")
    return scenario


def _looks_finished(run_dir: Path, scenario: Scenario) -> bool:
    """A run dir written before status.json existed: finished if every round is complete (and aggregated)."""
    from fedaudit.runstate import complete_rounds, contiguous

    if contiguous(complete_rounds(run_dir, scenario)) < scenario.federation.rounds:
        return False
    return not scenario.audit.enabled or (run_dir / "summary.json").is_file()


def _drop_retired_keys(run_dir: Path, scenario: Scenario) -> None:
    """Rewrite a scenario.toml of an earlier version that still holds retired keys (the run's own readers,
    the auditor's aggregation among them, read it as a scenario file)."""
    from fedaudit.config import RETIRED, read_toml
    from fedaudit.rundir import atomic_write_text

    raw = read_toml(run_dir / "scenario.toml")
    if any(isinstance(raw.get(sec), dict) and set(keys) & set(raw[sec]) for sec, keys in RETIRED.items()):
        log.info("%s: rewritten without the retired keys %s", run_dir / "scenario.toml", RETIRED)
        atomic_write_text(run_dir / "scenario.toml", scenario.to_toml())


def _check_same_ledger(run_dir: Path, prepared) -> None:
    from fedaudit.data import Ledger

    saved = Ledger.load(run_dir / "ledger.npz")
    if saved.num_clients != prepared.ledger.num_clients or not np.array_equal(saved.owner, prepared.ledger.owner):
        raise FedAuditError(f"--resume {run_dir}: the dataset no longer splits as recorded in ledger.npz (has the "
                            f"data file changed?); a resumed run must train on the same records")


def _resume_point(run_dir: Path, scenario: Scenario) -> tuple[int, list | None, dict | None]:
    """Set damaged files aside (named in warnings), then find the checkpoint to continue from."""
    from fedaudit.auditor.records import AuditRecords
    from fedaudit.runstate import checkpoint_path, checkpoint_rounds, load_checkpoint, move_aside, resume_round

    _set_aside_damaged_lines(run_dir / "rounds.jsonl")
    _set_aside_damaged_rounds(run_dir, scenario)
    records = run_dir / "audit" / "records.npz"
    if scenario.audit.enabled and records.exists():
        try:
            AuditRecords.load(records)
        except Exception as exc:  # noqa: BLE001 - any failure to read it is reported the same way
            raise FedAuditError(f"{records}: unreadable ({exc}); it lists the audited records, so the run cannot "
                                f"be resumed without it being intact") from None
    start = resume_round(run_dir, scenario)
    weights = state = None
    while start > 0:
        try:
            round_, weights, state = load_checkpoint(checkpoint_path(run_dir, start))
            if round_ != start:
                raise FedAuditError(f"{checkpoint_path(run_dir, start)}: holds round {round_}, not {start}")
            break
        except FedAuditError as exc:
            moved = move_aside(checkpoint_path(run_dir, start))
            log.warning("%s; set aside as %s", exc, moved.name)
            start = max([r for r in checkpoint_rounds(run_dir) if r < start], default=0)
    _set_aside_later_rounds(run_dir, start)
    return start, weights, state


def _set_aside_later_rounds(run_dir: Path, start: int) -> None:
    """What an earlier attempt wrote for the rounds after ``start``, which the resumed run trains and audits again
    from round ``start``'s model: their lines of rounds.jsonl go to rounds.jsonl.abandoned and their audit arrays
    to audit/round_NNNN.npz.abandoned. Otherwise a new round's line would be merged into the old one (keeping, say,
    a deviation or a failed client of the attempt that was given up) and a round the old attempt audited would not
    be audited again."""
    import json

    from fedaudit.auditor.state import round_path, saved_rounds
    from fedaudit.report.fmt import ranges
    from fedaudit.rundir import scan_jsonl
    from fedaudit.runstate import ABANDONED_SUFFIX, move_aside

    path = run_dir / "rounds.jsonl"
    rows, _ = scan_jsonl(path)          # damaged lines are already set aside (_set_aside_damaged_lines)

    def is_later(row) -> bool:
        return isinstance(row.get("round"), int) and row["round"] > start

    later = [r for r in rows if is_later(r)]
    if later:
        aside = _move_lines_aside(path, [r for r in rows if not is_later(r)],
                                  "".join(json.dumps(r) + "\n" for r in later).encode("utf-8"), ABANDONED_SUFFIX)
        log.warning("%s: rounds %s of the interrupted attempt are done again from round %d's model; their lines "
                    "are kept in %s", run_dir, ranges(sorted(r["round"] for r in later)), start, aside.name)
    for r in saved_rounds(run_dir):
        if r > start:
            move_aside(round_path(run_dir, r), ABANDONED_SUFFIX)


def _move_lines_aside(path: Path, keep: list, aside: bytes, suffix: str) -> Path:
    """Append the lines ``aside`` to ``<path><suffix>`` (kept, no longer read), then rewrite the JSON-lines file
    ``path`` with the rows ``keep``; returns the side file."""
    import json

    from fedaudit.rundir import atomic_write_bytes

    side = path.with_name(path.name + suffix)
    old = side.read_bytes() if side.exists() else b""
    atomic_write_bytes(side, old + aside)
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode("utf-8"))
    return side


def _set_aside_damaged_lines(path: Path) -> None:
    """Lines of rounds.jsonl that are not JSON objects go to rounds.jsonl.damaged (their rounds are redone)."""
    from fedaudit.rundir import scan_jsonl
    from fedaudit.runstate import DAMAGED_SUFFIX

    rows, bad = scan_jsonl(path)
    if not bad:
        return
    damaged = _move_lines_aside(path, rows, b"".join(raw + b"\n" for _, _, raw in bad), DAMAGED_SUFFIX)
    for number, reason, _ in bad:
        log.warning("%s line %d: %s; moved to %s (the rounds it held are redone)", path, number, reason,
                    damaged.name)


def _set_aside_damaged_rounds(run_dir: Path, scenario: Scenario) -> None:
    """An audited round whose audit/round_NNNN.npz cannot be opened is set aside and audited again."""
    import zipfile

    from fedaudit.auditor.state import round_path
    from fedaudit.runstate import move_aside
    from fedaudit.rundir import scan_jsonl

    if not scenario.audit.enabled:
        return
    rows, _ = scan_jsonl(run_dir / "rounds.jsonl")
    for row in rows:
        r = row.get("round")
        if not isinstance(r, int) or isinstance(r, bool) or not round_path(run_dir, r).exists():
            continue
        path = round_path(run_dir, r)
        try:
            with np.load(path, allow_pickle=False) as z:
                z.files  # noqa: B018 - opening reads the archive's directory
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            moved = move_aside(path)
            log.warning("%s: unreadable (%s); set aside as %s, round %d is audited again", path, exc, moved.name, r)


def _complete_summary(run_dir: Path) -> None:
    """summary.json's ``dp`` and ``privacy`` objects (accountant, canary and attack epsilon per threat model), with
    or without a report."""
    from fedaudit.privacy import complete_summary

    complete_summary(run_dir)


def write_report(run_dir) -> Path | None:
    """Write the run's report (report.html, plots/, tensorboard/) from its files; return report.html's path (None:
    the report's dependencies are not installed)."""
    try:
        from fedaudit.report import build_report
    except ImportError:
        return None
    return build_report(run_dir)


def summary_lines(run_dir, report: Path | None = None) -> list[str]:
    """The lines a finished run prints: headline risk per threat model, the test accuracy, the report's path."""
    from fedaudit.report.console import run_summary

    return run_summary(run_dir, report)


def audit_failed_rounds(run_dir) -> list[int]:
    """The rounds whose audit raised (rounds.jsonl's ``audit_error``)."""
    from fedaudit.schema import read_rounds

    return [line.round for line in read_rounds(Path(run_dir)) if line.audit_failed]


def audit_failed_everywhere(run_dir) -> bool:
    """Whether the run recorded rounds and the audit of every one of them raised (rounds.jsonl's ``audit_error``):
    trained and reported, but audited nowhere."""
    from fedaudit.schema import read_rounds

    rounds = read_rounds(Path(run_dir))
    return bool(rounds) and all(line.audit_failed for line in rounds)


def finish_run(run_dir, *, report: bool = True) -> list[str]:
    """What a run does once its rounds are done and aggregated (here, or in a Flower app's strategy): fill
    summary.json's ``dp`` and ``privacy`` objects, write the report when asked; return the lines to print."""
    _complete_summary(Path(run_dir))
    return summary_lines(run_dir, write_report(run_dir) if report else None)


def _run_twins(prepared, run_dir: Path, *, progress: bool) -> None:
    """Each deviating adversary's own federation (:mod:`fedaudit.twins`), one after the other, in ``RUN_DIR/active/``:
    started, resumed where an earlier attempt stopped, or skipped when finished; then merged into the run."""
    from dataclasses import replace

    from fedaudit.federation.driver import write_inputs
    from fedaudit.runstate import RunLock, read_status
    from fedaudit.twins import deviating, is_twin, merge_twin, twin_dir, twin_scenario

    scenario = prepared.scenario
    if is_twin(scenario):
        return
    for name in deviating(scenario.audit.threat_models):
        tdir = twin_dir(run_dir, name)
        state = read_status(tdir).state if tdir.is_dir() else None
        if state != "finished":
            log.warning("%s: the %s adversary's own federation (beside the passive run of the same seed)",
                        tdir, name)
            if state is None:
                tdir.mkdir(parents=True, exist_ok=True)
                twin = replace(prepared, scenario=twin_scenario(scenario, name))
                with RunLock(tdir):
                    write_inputs(tdir, twin)
                    _execute(twin, tdir, progress=progress, report=False, resumed=False)
            else:
                resume_run(tdir, progress=progress, report=False)
        merge_twin(run_dir, name)


def _execute(prepared, run_dir: Path, *, progress: bool, report: bool, resumed: bool, start: int = 0,
             weights=None, state=None) -> None:
    """Run (or continue) the federation, aggregate, record the outcome in status.json, then report."""
    from fedaudit.federation.driver import run_federation
    from fedaudit.runstate import end_attempt, progress as run_progress, prune_checkpoints, start_attempt

    scenario = prepared.scenario
    rounds = scenario.federation.rounds
    start_attempt(run_dir, rounds=rounds, from_round=start, resumed=resumed)
    sink_factory = None
    if scenario.audit.enabled:
        from fedaudit.auditor import auditor_sink

        sink_factory = auditor_sink
    try:
        if start < rounds:
            run_federation(prepared, run_dir, sink_factory=sink_factory, progress=progress, start_round=start,
                           start_weights=weights, start_state=state)
        elif scenario.audit.enabled:
            from fedaudit.auditor import aggregate_run

            aggregate_run(run_dir)          # every round was done; only the aggregation was missing
        if scenario.audit.enabled:
            _run_twins(prepared, run_dir, progress=progress)
        _complete_summary(run_dir)
    except Interrupted as exc:
        where = run_progress(run_dir, scenario)
        prune_checkpoints(run_dir, where["resume_after_round"])
        in_round = exc.round
        end_attempt(run_dir, "interrupted", signal=exc.signal_name, interrupted_in_round=in_round, **where)
        exc.detail = (f" in round {in_round}" if in_round else "") + (
            f"; rounds 1-{where['rounds_complete']} of {rounds} are complete" if where["rounds_complete"]
            else f"; no round of {rounds} is complete") + f"; continue with: fedaudit run --resume {run_dir}"
        raise
    except BaseException as exc:
        end_attempt(run_dir, "failed", error=f"{type(exc).__name__}: {exc}"[:2000], **run_progress(run_dir, scenario))
        raise
    prune_checkpoints(run_dir, rounds)          # the final global model stays
    end_attempt(run_dir, "finished", **run_progress(run_dir, scenario))
    if report:
        write_report(run_dir)                   # after the final status, which the report states
