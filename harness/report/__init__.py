"""Reports: trials as a DataFrame (data), plots, LaTeX/Markdown tables, scaling-law fits, the
summary (summary), a whole report (build) and the command line (cli; `python -m harness.report`).
In a notebook: `harness.report.load_trials("quickstart")`. Names are imported when first used, so
the command's --help starts at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.lazy import lazy_exports

_EXPORTS = {"Report": "harness.report.build", "build_report": "harness.report.build",
            "load_history": "harness.report.data", "load_trials": "harness.report.data",
            "main": "harness.report.cli"}
__all__ = ["Report", "build_report", "load_history", "load_trials", "main"]

if TYPE_CHECKING:
    from harness.report.build import Report, build_report
    from harness.report.cli import main
    from harness.report.data import load_history, load_trials


__getattr__ = lazy_exports(__name__, _EXPORTS)
