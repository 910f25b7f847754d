"""Workers stopped mid-trial, through the real `python -m harness.sweep`: SIGKILL, SIGTERM and
SIGINT, and a trial reaped while it still trains. The study stays consistent and a re-run
accounts for every trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from scripts_run import sweep_here
from spaces import assert_settled, load, slow_space, write_space

from harness.sweep.budget import budget_state
from harness.sweep.leases import LEASE_ATTR
from harness.sweep.optuna_private import study_storage, trial_id

ROOT = Path(__file__).resolve().parents[2]


def start_sweep(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.sweep", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout: float = 60.0, every: float = 0.1):
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = predicate()
        except (KeyError, FileNotFoundError):  # no journal yet, or no study record in it yet
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def test_sigkill_of_a_worker_mid_trial_then_rerun_accounts_for_every_trial(synthetic_store,
                                                                          tmp_path, capsys):
    results = tmp_path / "results"
    space = str(write_space(tmp_path / "slow.yaml", slow_space(synthetic_store, results, 3, 30)))
    proc = start_sweep(space)
    storage_file = results / "t" / "study.journal"
    wait_for(storage_file.exists)

    def running_after_a_complete():
        trials = load(results).get_trials()
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and t.params
                   and t.system_attrs.get(LEASE_ATTR, {}).get("trial") == t.number]
        return (done, running[0]) if done and running else None

    done, victim = wait_for(running_after_a_complete, timeout=120)
    os.kill(victim.system_attrs[LEASE_ATTR]["pid"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out  # the parent reports the dead worker, and releases its trial
    assert "no error in its log" in out and "it may have been killed from outside" in out
    assert f"trial(s) [{victim.number}], left running, were failed and re-enqueued" in out
    assert load(results).trials[victim.number].state == TrialState.FAIL

    rerun = sweep_here(capsys, space)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    study = load(results)
    trials = study.get_trials()
    assert_settled(study)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert "worker process" in killed.user_attrs["fail_reason"]
    retries = [t for t in trials if victim.number in t.system_attrs.get("retry_history", [])]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    for t in done:  # nothing finished before the kill was lost
        assert trials[t.number].state == TrialState.COMPLETE
        assert trials[t.number].value == t.value
        assert (Path(t.user_attrs["trial_dir"]) / "sae_weights.safetensors").exists()
    assert budget_state(study).used == 3


# the re-run does not depend on the signal: it is tested once
@pytest.mark.parametrize(("sig", "code", "rerun", "workers"), [(signal.SIGTERM, 143, True, "2"),
                                                               (signal.SIGINT, 130, False, "1")])
def test_signal_stops_cleanly_and_the_rerun_continues(synthetic_store, tmp_path, sig, code,
                                                      rerun, workers, capsys):
    results = tmp_path / "results"
    space = str(write_space(tmp_path / "slow.yaml", slow_space(synthetic_store, results, 2)))
    proc = start_sweep(space, "--workers", workers)
    wait_for(lambda: (results / "t" / "study.journal").exists())
    wait_for(lambda: any(t.state == TrialState.RUNNING for t in load(results).get_trials()))
    time.sleep(0.5)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    assert "re-run the same command to continue" in out
    study = load(results)
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    interrupted = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert interrupted and all(f"interrupted by {sig.name}" in t.user_attrs["fail_reason"]
                               for t in interrupted)
    assert len([t for t in study.get_trials() if t.state == TrialState.WAITING]) == len(interrupted)
    if not rerun:
        return
    again = sweep_here(capsys, space)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[-" not in again.stdout  # the progress of a resumed study counts from where it was
    study = load(results)
    assert_settled(study)
    assert budget_state(study).used == 2
    assert sum(t.state == TrialState.COMPLETE for t in study.get_trials()) >= 1


def test_a_worker_whose_trial_was_reaped_goes_on(synthetic_store, tmp_path):
    """Another worker may fail a trial whose lease ran out (a busy machine) while it still
    trains: its worker drops the result and goes on, it does not crash."""
    results = tmp_path / "results"
    space = str(write_space(tmp_path / "slow.yaml", slow_space(synthetic_store, results, 2)))
    proc = start_sweep(space)
    running = wait_for(lambda: next((t for t in load(results).get_trials()
                                     if t.state == TrialState.RUNNING), None))
    study = load(results)
    study_storage(study).set_trial_state_values(trial_id(running), TrialState.FAIL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    logs = "".join(p.read_text() for p in (results / "t" / "logs").glob("*.log"))
    assert f"trial {running.number} was reaped while running, result dropped" in logs
    assert "Traceback" not in logs
