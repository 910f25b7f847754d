"""The report's command line (`python -m harness.report --help`), kept apart from the command so
that parsing it imports nothing heavy."""

from __future__ import annotations

import argparse

FORMATS = ("md", "tex", "csv", "parquet")
"""What a report can write besides its plots."""
DESCRIPTION = """python -m harness.report STUDY [STUDY ...]: tables, plots and scaling fits from
sweeps.

Reads the study storage and the trial folders only. Writes into `--out` (default
results/<study>/report/): trials.csv (and .parquet), summary.md, table.tex, and PNG + PDF plots
(pareto, learning_curves, importance, lr_sensitivity, scaling). In a notebook:
`harness.report.load_trials("quickstart")` gives the trials as a DataFrame.
"""
"""What the command does (its --help)."""
EXIT_BAD_INPUT = 2
"""Exit status when a study, storage or option cannot be used (as the sweep and evaluate)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.report", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study name(s); several are "
                   "concatenated with a `study` column")
    p.add_argument("--storage", help="Optuna storage (else $SAESWEEP_STORAGE, else "
                   "results/<study>/study.journal)")
    p.add_argument("--artifacts", help="where the sweep's artifact store is reachable from this "
                   "machine, if not where the trials recorded it")
    p.add_argument("--results", default="results", help="results folder of the sweeps")
    p.add_argument("--out", help="output folder (default results/<study>/report/)")
    p.add_argument("--format", default=",".join(FORMATS),
                   help="comma-separated: md,tex,csv,parquet (default all)")
    p.add_argument("--metric", choices=("r2", "fvu"), default="r2",
                   help="reconstruction metric for tables and learning curves")
    p.add_argument("--group-by", default="expansion,k",
                   help="columns of the best-per-group table (default expansion,k)")
    p.add_argument("--wandb", choices=("online", "offline", "off"), default="off",
                   help="also log the tables and plots as a W&B report run")
    return p
