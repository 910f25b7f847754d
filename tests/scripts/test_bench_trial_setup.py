"""scripts/bench_trial_setup.py end to end on a tiny store."""

import re

from scripts_run import run_script


def test_bench_trial_setup_times_both_modes():
    proc = run_script("bench_trial_setup.py", "--tokens", "20000", "--d", "16", "--n-latents",
                      "64", "--k", "4", "--batch", "256", "--steps", "2", "--trials", "2")
    assert proc.returncode == 0, proc.stderr
    for label in ("store read per trial", "tokens kept across trials"):
        assert len(re.findall(rf"{label}\s+trial \d: wall", proc.stdout)) == 2
    assert re.search(r"read per trial, \d+\.\d+ s kept", proc.stdout)
