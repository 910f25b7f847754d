"""Preemption through the real CLI: SIGTERM (a scheduler's notice) checkpoints promptly and exits
143; SIGKILL loses at most checkpoint_every steps; either way the retry resumes from the
checkpoint and ends where an uninterrupted run of the same seed ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from scripts_run import sweep_here
from spaces import tiny_space, write_space

from harness.sweep.storage import open_storage
from harness.sweep.trial_record import TrialRecord

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6 * 90  # 6 epochs of ceil(5700 training tokens / 64)


def long_trial(store: Path, results: Path, name: str) -> dict:
    """One trial of 540 small steps, checkpointed every 25."""
    return tiny_space(store, results, study={"name": name, "seed": 0},
                      params={"expansion": 4, "k": 4, "lr": 2e-3},
                      training={"epochs": 6, "batch_size": 64, "eval_every": 150},
                      budget={"n_trials": 1}, wandb={"mode": "off"},
                      faults={"heartbeat_s": 0.5, "lease_s": 30, "checkpoint_every": 25})


def start(space: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.sweep", str(space)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoint_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def wait_for_step(path: Path, at_least: int, proc: subprocess.Popen) -> int:
    end = time.time() + 180
    while time.time() < end:
        step = checkpoint_step(path)
        if step is not None and step >= at_least:
            return step
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    raise AssertionError("the trial never reached the step")


def trials(results: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(str(results / name / "study.journal"))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.fixture(scope="module")
def uninterrupted_r2(synthetic_store, tmp_path_factory) -> float:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    space = write_space(tmp / "s.yaml", long_trial(synthetic_store, tmp / "results", "p"))
    from harness.sweep.cli import main

    assert main([str(space)]) == 0  # in this process; its worker is a real one
    (t,) = trials(tmp / "results", "p")
    return float(t.user_attrs["final_r2"])


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_preempted_trial_resumes_from_its_checkpoint(synthetic_store, tmp_path, how,
                                                       uninterrupted_r2, capsys):
    results = tmp_path / "results"
    space = write_space(tmp_path / "s.yaml", long_trial(synthetic_store, results, "p"))
    checkpoint = results / "p" / "artifacts" / "checkpoints" / "p" / "0000.pt"
    proc = start(space)
    wait_for_step(checkpoint, int(0.6 * STEPS), proc)
    if how == "SIGTERM":  # what a scheduler sends the job: the sweep passes it to its workers
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
        took = time.time() - sent
        assert proc.returncode == 143 and took < 30, (took, out)
    else:  # the node dies: the worker gets no notice
        worker = int(subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "harness.sweep.worker"],
                                    capture_output=True, text=True).stdout.split()[0])
        subprocess.run(["kill", "-9", str(worker)], check=True)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 1, out
    saved = checkpoint_step(checkpoint)
    assert saved is not None and 0.6 * STEPS <= saved < STEPS
    first = trials(results, "p")[0]
    if how == "SIGTERM":  # failed with the reason and re-enqueued at once
        assert first.state == TrialState.FAIL
        assert first.user_attrs["fail_reason"] == \
            f"interrupted by SIGTERM; checkpoint at step(s) [{saved}]"
    else:  # the worker could not record it: the sweep released it when the worker died
        assert first.state == TrialState.FAIL
        assert first.user_attrs["fail_reason"].startswith("lease expired: worker process")
    rerun = sweep_here(capsys, str(space))  # the re-run: in this process, a real worker
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    done = [t for t in trials(results, "p") if t.state == TrialState.COMPLETE]
    assert len(done) == 1
    record = TrialRecord.from_frozen(done[0])
    assert record.resumed_from_step == saved  # from the checkpoint, not from step 0
    assert record.metrics["steps"] == STEPS
    assert abs(record.final("r2") - uninterrupted_r2) < 1e-3
    assert not checkpoint.exists()
    print(f"{how}: checkpoint at step {saved} of {STEPS}; resumed there; final R² "
          f"{record.final('r2'):.6f} vs {uninterrupted_r2:.6f} uninterrupted"
          + (f"; exit 143 {took:.2f} s after SIGTERM" if how == "SIGTERM" else ""))
