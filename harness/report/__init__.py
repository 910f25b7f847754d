"""Reports: trials as a DataFrame (data), plots, LaTeX/Markdown tables, scaling-law fits, and
the command line (cli; `python -m harness.report`). In a notebook:
`harness.report.load_trials("quickstart")`."""

from harness.report.cli import Report, build_report, main
from harness.report.data import load_history, load_trials

__all__ = ["Report", "build_report", "load_history", "load_trials", "main"]
