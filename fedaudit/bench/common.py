"""Shared helpers for the benchmarks: a table printer and the JSON output."""

from __future__ import annotations

import json
from pathlib import Path

from fedaudit.rundir import atomic_write_text, json_safe


def report(title: str, rows: list[tuple[str, str]], figures: dict, json_path: str | None) -> dict:
    """Print ``rows`` as an aligned two-column table under ``title``; write ``figures`` to ``json_path``."""
    width = max(len(k) for k, _ in rows)
    print(title)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if json_path:
        atomic_write_text(Path(json_path), json.dumps(json_safe(figures), indent=2) + "\n")
    return figures
