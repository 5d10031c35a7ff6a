"""Reports built from a run directory's files alone: report.html, plots/*.png, tensorboard/, and the
side-by-side comparison of several runs (:mod:`fedaudit.report.compare`). No TensorFlow here."""

from __future__ import annotations


def build_report(run_dir, *, tensorboard: bool = True):
    """Write ``report.html``, ``plots/*.png`` and ``tensorboard/`` into ``run_dir``; return report.html's path.

    A single-model audit's run directory (``fedaudit audit-model``) gets the single-model report."""
    from fedaudit.report.model_report import build_model_report, is_model_audit

    if is_model_audit(run_dir):
        return build_model_report(run_dir)
    from fedaudit.report.run_report import build_report as _build

    return _build(run_dir, tensorboard=tensorboard)


def build_comparison(run_dirs, out, **kwargs):
    """Write ``comparison.html`` (and its plots) into ``out`` from existing run directories; return its path."""
    from fedaudit.report.compare import build_comparison as _build

    return _build(run_dirs, out, **kwargs)


__all__ = ["build_report", "build_comparison"]
