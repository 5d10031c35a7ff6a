"""One scenario end to end: check the inputs, run the federation (audited when asked), report."""

from __future__ import annotations

import logging
from pathlib import Path

from fedaudit.config import Scenario
from fedaudit.errors import ConfigError
from fedaudit.rundir import new_run_dir

log = logging.getLogger(__name__)


def resolve_run_dir(scenario: Scenario, out: str | Path | None) -> Path:
    if out is None:
        return new_run_dir("runs", scenario.name)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: already exists and is not an empty folder; name a new or empty folder")
    return out


def run_scenario(scenario: Scenario, out: str | Path | None = None, progress: bool = True,
                 fail_clients: dict | None = None, report: bool = True,
                 kill_auditor_after_round: int | None = None) -> Path:
    """Run ``scenario`` and return its run directory. Nothing is written before the inputs are checked.

    ``kill_auditor_after_round`` (a test hook) kills the auditor actor after that round is handed to it.
    """
    from fedaudit.federation.driver import prepare, run_federation, write_inputs

    run_dir = resolve_run_dir(scenario, out)
    prepared = prepare(scenario)
    write_inputs(run_dir, prepared)
    sink_factory = None
    if scenario.audit.enabled:
        from fedaudit.auditor import auditor_sink

        sink_factory = auditor_sink
        if kill_auditor_after_round is not None:
            import functools

            sink_factory = functools.partial(auditor_sink, kill_auditor_after_round=kill_auditor_after_round)
    run_federation(prepared, run_dir, sink_factory=sink_factory, progress=progress, fail_clients=fail_clients)
    if report:
        try:
            from fedaudit.report import build_report
        except ImportError:
            build_report = None
        if build_report is not None:
            build_report(run_dir)
    return run_dir
