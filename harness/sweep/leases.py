"""Leases of running trials, and the reaping of abandoned ones.

On an RDB storage, Optuna's own heartbeat (RDBStorage heartbeat_interval / grace_period) marks
running trials; on a journal file, which has none, every running trial gets a heartbeat of our
own (a system attribute rewritten every `heartbeat_s`). Any worker, before it starts a trial,
reaps RUNNING trials whose worker is gone (same host and the process no longer exists) or whose
heartbeat is older than `lease_s`: the trial is failed with the reason and its parameters
re-enqueued through Optuna's RetryHeartbeatStaleTrialCallback (at most `max_retry` times).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from harness.sweep.budget import superseded_numbers
from harness.sweep.optuna_private import study_storage, trial_id
from harness.sweep.storage import budget_lock, close_storage, open_storage

LEASE_ATTR = "saesweep:lease"
"""The system attribute a running trial's heartbeat rewrites (journal storages)."""


def uses_optuna_heartbeat(storage: BaseStorage) -> bool:
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


class Heartbeat:
    """Rewrites a running trial's lease every `interval` seconds from a daemon thread."""

    def __init__(self, storage: BaseStorage, trial_id: int, number: int, interval: float) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.number, self.interval = number, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{number}", daemon=True)

    def beat(self) -> None:
        if uses_optuna_heartbeat(self.storage):
            self.storage.record_heartbeat(self.trial_id)
        else:
            self._lease()

    def _lease(self) -> None:
        self.storage.set_trial_system_attr(self.trial_id, LEASE_ATTR, {
            "trial": self.number, "host": socket.gethostname(), "pid": os.getpid(),
            "beat": time.time()})

    def start(self) -> Heartbeat:
        self._lease()  # who runs it: lets a worker on the same host reap it the moment it dies
        if uses_optuna_heartbeat(self.storage):
            self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001 - trial finished (or storage hiccup): stop
                logging.getLogger("saesweep.worker").info(
                    "trial %d: heartbeat stopped (%s: %s)", self.number, type(e).__name__, e)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(trial: FrozenTrial, lease_s: float, now: float | None = None,
                 check_age: bool = True) -> str | None:
    """Why a RUNNING trial is abandoned, or None while its worker is alive. `check_age=False`
    leaves silent workers to Optuna's heartbeat (RDB storages) and only spots dead ones."""
    now = time.time() if now is None else now
    lease = trial.system_attrs.get(LEASE_ATTR)
    # a lease naming another trial number was inherited by a retry: ignore it
    if isinstance(lease, dict) and lease.get("trial") == trial.number:
        if lease.get("host") == socket.gethostname() and not _pid_alive(int(lease["pid"])):
            return f"worker process {lease['pid']} on {lease['host']} is gone"
        if not check_age:
            return None
        age = now - float(lease["beat"])
        if age > lease_s:
            return f"no heartbeat for {age:.0f}s (lease {lease_s:g}s)"
        return None
    if not check_age:
        return None
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    if now - started > lease_s:
        return f"no heartbeat since it started {now - started:.0f}s ago (lease {lease_s:g}s)"
    return None


def reap_stale(study: optuna.Study, lease_s: float, max_retry: int) -> list[int]:
    """Fail abandoned RUNNING trials and re-enqueue their parameters; returns their numbers.

    On an RDB storage Optuna's heartbeat decides which are stale (fail_stale_trials, which
    re-enqueues them through the storage's callback); a worker process known to be gone on this
    host is reaped at once on either storage."""
    storage = study_storage(study)
    reaped = []
    optuna_heartbeat = uses_optuna_heartbeat(storage)
    if optuna_heartbeat:
        running = {t.number for t in study.get_trials(deepcopy=False,
                                                      states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        still = {t.number for t in study.get_trials(deepcopy=False,
                                                    states=(TrialState.RUNNING,))}
        reaped += sorted(running - still)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(trial, lease_s, check_age=not optuna_heartbeat)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial_id(trial), "fail_reason", f"lease expired: {reason}")
            if not storage.set_trial_state_values(trial_id(trial), TrialState.FAIL):
                continue
        except (UpdateFinishedTrialError, RuntimeError):
            continue  # another worker reaped it first, or it just finished
        requeue(study, storage.get_trial(trial_id(trial)), max_retry)
        reaped.append(trial.number)
    # a reaper killed between failing a trial and re-enqueueing it left it failed, not retried
    trials = study.get_trials(deepcopy=False)
    retried = superseded_numbers(trials)
    for trial in trials:
        if (trial.state == TrialState.FAIL and trial.number not in retried
                and str(trial.user_attrs.get("fail_reason", "")).startswith("lease expired")):
            requeue(study, trial, max_retry)
    return reaped


def reap_locked(study: optuna.Study, url: str, lease_s: float, max_retry: int,
                storage: BaseStorage | None = None) -> list[int]:
    """reap_stale under the study's budget lock: two reapers (workers, the sweep releasing a
    dead worker's trial) must not both re-enqueue one trial. `storage`: the storage `url`
    opened (a study's own is wrapped in Optuna's cache); None opens one for the lock."""
    own = storage is None
    lock_storage = open_storage(url) if storage is None else storage
    try:
        with budget_lock(url, lock_storage):
            return reap_stale(study, lease_s, max_retry)
    finally:
        if own:
            close_storage(lock_storage)


def requeue(study: optuna.Study, failed: FrozenTrial, max_retry: int) -> bool:
    """Enqueue a failed trial's parameters again (Optuna's retry callback; experimental);
    False when its configuration has had its `max_retry` retries and is dropped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    callback(study, failed)
    return len(failed.system_attrs.get("retry_history", [])) < max_retry

