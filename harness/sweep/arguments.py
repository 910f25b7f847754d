"""The sweep's command line (`python -m harness.sweep --help`), kept apart from the command so
that parsing it imports nothing heavy."""

from __future__ import annotations

import argparse
import math

EXIT_BAD_SPACE = 2
"""Exit status of every check that fails before anything is written."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.sweep",
        description="Run or resume a sweep of sparse autoencoders declared in a search-space YAML "
                    "file. Re-running the same command continues the study where it stopped.")
    p.add_argument("space", nargs="?", help="search-space YAML (default: "
                   "search_spaces/quickstart.yaml: synthetic data, 2 workers)")
    p.add_argument("--n-trials", type=_positive_int,
                   help="trial budget for the whole study (overrides budget.n_trials)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=_positive_int,
                       help="worker processes on one machine (default: the space's workers, "
                            "else 1); on CPU the cores are divided among them, on GPUs they are "
                            "spread over the visible ones")
    group.add_argument("--devices", help="comma-separated devices, one worker each, e.g. "
                       "cuda:0,cuda:1 (each worker sees only its GPU via CUDA_VISIBLE_DEVICES)")
    p.add_argument("--trials-per-device", type=_positive_int, metavar="M",
                   help="workers (so trials at a time) on each device of --devices, or on each "
                        "visible GPU; refused before anything starts when the space's largest "
                        "trial, M times over, would not fit in a GPU's memory")
    p.add_argument("--storage", help="Optuna storage (else $SAESWEEP_STORAGE, else the space's "
                   "study.storage): a journal file path (default results/<study>/study.journal) "
                   "or an RDB URL such as postgresql://user:password@host/db")
    p.add_argument("--study", help="study name (overrides study.name)")
    p.add_argument("--wandb", choices=("online", "offline", "off"),
                   help="W&B mode for the trial runs (overrides wandb.mode)")
    p.add_argument("--timeout", type=_positive_float, help="stop starting new trials after "
                   "this many seconds (overrides budget.timeout)")
    p.add_argument("--results", help="results folder (overrides results_dir, default results/)")
    p.add_argument("--artifacts", help="where every trial's files are also stored (Optuna "
                   "artifact store): a folder, shared by all nodes, or s3://bucket (needs "
                   "boto3); default results/<study>/artifacts")
    p.add_argument("--lockstep", type=_positive_int, help="trials each worker trains together "
                   "on the same batches (overrides lockstep, default 1)")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got "
                                         f"{text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value
