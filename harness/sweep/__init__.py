"""Sweeps: search spaces (space), the Optuna study with leases and budget (study), worker
processes (worker, devices), one trial end to end (trial, pruning, trial_record), and the
command line (cli; `python -m harness.sweep`).

Nothing is imported here, so `python -m harness.sweep.worker` starts without importing the
command line first.
"""
