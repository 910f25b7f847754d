"""Sweep benchmark on the quickstart space, through the real CLI.

1. Harness overhead per trial: a trial's wall time (Optuna's start to completion) minus the time
   the trainer spent in its training loop (steps + evaluations), as a fraction of the trial's
   wall time: storage traffic, store opening, b_dec init, saving files, W&B. Measured with W&B
   offline (the quickstart's setting) and off.
2. Pruning: the quickstart made single-objective (maximise R², so Optuna's median pruner
   applies), with pruning and with none, same sampler seed, one worker: trial-epochs trained
   (tokens seen / training tokens, summed over trials), wall time, and the best held-out R².

    python scripts/bench_sweep.py [--n-trials 16]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from harness.sweep.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def run(space: dict, results: Path, name: str, n_trials: int, wandb: str) -> tuple[float, list]:
    space = {**space, "study": {**space["study"], "name": name}, "results_dir": str(results)}
    path = results / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "--n-trials", str(n_trials),
                    "--wandb", wandb, "--workers", "1"], cwd=ROOT, check=True,
                   capture_output=True)
    wall = time.perf_counter() - start
    storage = open_storage(str(results / name / "study.journal"))
    return wall, optuna.load_study(study_name=name, storage=storage).get_trials()


def overhead(trials: list) -> tuple[float, float, float]:
    """(mean trial wall s, mean training-loop s, overhead fraction)."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    total = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished)
    train = sum(t.user_attrs["train_time_s"] for t in finished)
    return total / len(finished), train / len(finished), (total - train) / total


def epochs(trials: list) -> float:
    return sum(t.user_attrs["tokens_seen"] / t.user_attrs["n_train_tokens"] for t in trials
               if "tokens_seen" in t.user_attrs)


def best_r2(trials: list) -> float:
    return max(t.user_attrs["final_r2"] for t in trials if t.state == TrialState.COMPLETE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-trials", type=int, default=16)
    args = p.parse_args()
    space = yaml.safe_load(QUICKSTART.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        space["data"]["store"] = str(results / "store")
        # warm the synthetic store so data generation is not timed
        run(space, results, "warmup", 1, "off")

        print(f"quickstart, {args.n_trials} trials, 1 worker, torch threads = all cores")
        print("1. harness overhead per trial (trial wall time outside the training loop)")
        for mode in ("offline", "off"):
            wall, trials = run(space, results, f"overhead_{mode}", args.n_trials, mode)
            per_trial, train, frac = overhead(trials)
            print(f"   W&B {mode:7s}: trial {per_trial:5.2f} s, training loop {train:5.2f} s, "
                  f"overhead {100 * frac:5.1f}% of trial time; whole command {wall:6.1f} s")

        print("2. pruning vs no pruning: the quickstart made single-objective (max R2) with "
              "median pruning, same sampler seed, W&B off")
        single = {**space, "objectives": [{"metric": "r2", "direction": "maximize"}],
                  "pruner": {"type": "median",
                             "options": {"n_startup_trials": 5, "n_warmup_steps": 80},
                             "dead_features": {"max_ratio": 0.6, "warmup_steps": 200},
                             "r2_floor": {"min_r2": 0.0, "warmup_steps": 80}}}
        unpruned = {**single, "pruner": {"type": "none"}}
        for label, s in (("pruning on ", single), ("pruning off", unpruned)):
            wall, trials = run(s, results, label.strip().replace(" ", "_"), args.n_trials, "off")
            pruned = sum(t.state == TrialState.PRUNED for t in trials)
            print(f"   {label}: {epochs(trials):6.1f} trial-epochs, {pruned:2d} pruned, "
                  f"best R2 {best_r2(trials):.4f}, wall {wall:6.1f} s")


if __name__ == "__main__":
    main()
