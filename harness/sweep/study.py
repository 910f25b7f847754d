"""The Optuna side of a sweep: storage, sampler, pruner, the study's record and leases.

Leases: on an RDB storage, Optuna's own heartbeat (RDBStorage heartbeat_interval /
grace_period) marks running trials; on a journal file, which has none, every running trial gets
a heartbeat of our own (a system attribute rewritten every `heartbeat_s`). Any worker, before it
starts a trial, reaps RUNNING trials whose worker is gone (same host and the process no longer
exists) or whose heartbeat is older than `lease_s`: the trial is failed with the reason and its
parameters re-enqueued through Optuna's RetryHeartbeatStaleTrialCallback (at most `max_retry`
times).

Budget (harness.sweep.budget): `n_trials` counts every trial of the study except those
superseded by a retry, and enqueued (WAITING) trials always run. Workers check the budget and
ask for their trial under one lock (a file lock beside a journal or SQLite file, a PostgreSQL
advisory lock across nodes), so the budget is exact; only on other servers (MySQL) may parallel
workers overshoot by at most one trial each, as with Optuna's MaxTrialsCallback.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import (
    BaseStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.trial import FrozenTrial, TrialState

from harness.core.training.config import DataOptions
from harness.sweep.budget import superseded_numbers
from harness.sweep.optuna_private import study_storage, trial_id
from harness.sweep.space import (
    PRUNERS,
    SAMPLERS,
    LoadedSpace,
    ParamSpec,
    SpaceError,
)
from harness.sweep.storage import (
    budget_lock,
    close_storage,
    open_storage,
    storage_holds_anything,
)
from harness.sweep.urls import masked
from harness.sweep.warm_start import warm_start, warm_start_sources
from harness.version import saesweep_version

LEASE_ATTR = "saesweep:lease"
STORAGE_ENV = "SAESWEEP_STORAGE"
"""Where a storage URL may be given instead of --storage (and how workers receive it: a URL in
an environment variable stays out of `ps` and the logs)."""


# ------------------------------------------------------------------------------ construction
def journal_path(results_dir: str | Path, study_name: str) -> Path:
    """Where a sweep keeps its study by default: <results_dir>/<study>/study.journal."""
    return Path(results_dir) / study_name / "study.journal"


def default_storage(loaded: LoadedSpace) -> str:
    return str(journal_path(loaded.space.results_dir, loaded.space.study.name))


def storage_url(flag: str | None, space_value: str | None, default: str) -> str:
    """--storage, else $SAESWEEP_STORAGE, else the space's study.storage, else the default."""
    return flag or os.environ.get(STORAGE_ENV) or space_value or default


def uses_optuna_heartbeat(storage: BaseStorage) -> bool:
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


def make_sampler(loaded: LoadedSpace, seed: int) -> optuna.samplers.BaseSampler:
    cfg = loaded.space.sampler
    if cfg.type == "grid":
        # GridSampler gives trial n the n-th point of a grid order shuffled by its seed: every
        # worker must use the same seed, or they run some points twice and skip others
        return optuna.samplers.GridSampler(loaded.grid(), seed=loaded.space.study.seed)
    return SAMPLERS[cfg.type](seed=seed, **cfg.options)


def make_pruner(loaded: LoadedSpace) -> optuna.pruners.BasePruner:
    cfg = loaded.space.pruner
    cls = PRUNERS[cfg.type]
    return optuna.pruners.NopPruner() if cls is None else cls(**cfg.options)


def resolved_settings(obj: Any) -> dict[str, Any]:
    """Every constructor argument of an Optuna sampler/pruner with the value in effect."""
    out: dict[str, Any] = {"class": type(obj).__name__}
    for name in inspect.signature(type(obj).__init__).parameters:
        if name == "self":
            continue
        for attr in (f"_{name}", name):
            if not hasattr(obj, attr):
                continue
            value = getattr(obj, attr)
            if isinstance(value, bool | int | float | str) or value is None:
                out[name] = value
                break
    return out


def worker_seed(study_seed: int, worker_index: int, n_existing: int) -> int:
    """Distinct per worker and per re-run, so resumed random samplers do not repeat themselves."""
    return (study_seed * 1_000_003 + worker_index * 7919 + n_existing * 104_729) % (2**31 - 1)


def warm_start_plan(loaded: LoadedSpace, storage_url: str) -> list[tuple[str, optuna.Study]]:
    """The checked warm-start sources of a study not created yet; [] when it exists (a resumed
    study is left as it is). Writes nothing: a refused source leaves no study behind."""
    s = loaded.space
    if not s.study.warm_start:
        return []
    if storage_holds_anything(storage_url):
        try:
            optuna.load_study(study_name=s.study.name, storage=open_storage(storage_url))
            return []
        except KeyError:
            pass
    return warm_start_sources(loaded, storage_url)


def create_study(loaded: LoadedSpace, storage_url: str,
                 sources: list[tuple[str, optuna.Study]] | None = None) -> optuna.Study:
    """Create the study (or load it when resuming) and record how it is run; a new study starts
    from `sources` (else those `warm_start_plan` finds)."""
    s = loaded.space
    if sources is None:
        sources = warm_start_plan(loaded, storage_url)
    storage = open_storage(storage_url, s.faults)
    sampler = make_sampler(loaded, worker_seed(s.study.seed, 0, 0))
    pruner = make_pruner(loaded)
    directions = [optuna.study.StudyDirection[d.upper()] for d in s.directions]
    try:
        existing = optuna.load_study(study_name=s.study.name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None and list(existing.directions) != directions:
        raise SpaceError(f"{loaded.path}: objectives: study {s.study.name!r} in "
                         f"{masked(storage_url)} has "
                         f"directions {[d.name.lower() for d in existing.directions]}, the space "
                         f"asks for {s.directions}; use another study name")
    definition = study_definition(loaded)
    fingerprint = joblib.hash(definition)
    if existing is not None:
        _refuse_changed_definition(existing, definition, fingerprint, loaded, storage_url)
    if existing is not None:
        sources = []
    study = optuna.create_study(study_name=s.study.name, storage=storage, sampler=sampler,
                                pruner=pruner, directions=s.directions, load_if_exists=True)
    attrs = study.user_attrs
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {
        "space": loaded.raw_masked(),
        "space_file": str(loaded.path),
        "objectives": [o.model_dump() for o in s.objectives],
        "sampler": {"type": s.sampler.type, "options": s.sampler.options,
                    "resolved": resolved_settings(sampler)},
        "pruner": {"type": s.pruner.type, "options": s.pruner.options,
                   "resolved": resolved_settings(pruner),
                   "dead_features": s.pruner.dead_features.model_dump()
                   if s.pruner.dead_features else None,
                   "r2_floor": s.pruner.r2_floor.model_dump() if s.pruner.r2_floor else None},
        "data": {**s.data.model_dump(), "d": loaded.d},
        "n_trials": s.budget.n_trials,
        "optuna_version": optuna.__version__,
        "saesweep_version": saesweep_version(),
        "results_dir": str(Path(s.results_dir) / s.study.name),
        "storage": masked(storage_url),
        "definition": definition,
        "fingerprint": fingerprint,
    }
    if "created" not in attrs:
        record["created"] = now
    record["invocations"] = [*attrs.get("invocations", []), now]
    for key, value in record.items():
        study.set_user_attr(key, value)
    warm = warm_start(study, loaded, sources)
    if warm.copied or warm.lower_rungs:
        study.set_user_attr("warm_started", {"from": s.study.warm_start, "trials": warm.copied,
                                             "lower_rungs": warm.lower_rungs})
    return study


def study_definition(loaded: LoadedSpace) -> dict[str, Any]:
    """What a study's trials are comparable on: its objectives, its data (the activation run,
    its width, the held-out split) and its parameter distributions. Budget, workers, sampler,
    pruner and W&B may change between runs of one study; these (and the rungs) may not."""
    s = loaded.space
    rungs = {"fidelity": s.fidelity.model_dump()} if s.fidelity is not None else {}
    return {
        **rungs,  # only when set: the definitions (fingerprints) of studies without rungs stay
        "objectives": [o.model_dump() for o in s.objectives],
        "data": {"store": str(Path(s.data.store).resolve()), "run_id": s.data.run_id,
                 "layer_signature": s.data.layer_signature, "d": loaded.d,
                 "max_tokens": s.data.max_tokens,
                 "holdout_fraction": s.training.get("holdout_fraction",
                                                    DataOptions.holdout_fraction)},
        "params": {name: spec.model_dump() if isinstance(spec, ParamSpec) else spec
                   for name, spec in s.params.items()},
    }


def _refuse_changed_definition(study: optuna.Study, definition: dict[str, Any],
                               fingerprint: str, loaded: LoadedSpace, storage_url: str) -> None:
    """A SpaceError naming what differs, when the study was defined otherwise (joblib.hash of
    the definition). Studies made before fingerprints were recorded are adopted as they are."""
    attrs = study.user_attrs
    if attrs.get("fingerprint") in (None, fingerprint):
        return
    before = attrs.get("definition", {})
    now = json.loads(json.dumps(definition))  # as storage returns it: tuples are lists
    changes = []
    for section, new_section in now.items():
        old_section = before.get(section)
        for key in _keys(old_section, new_section):
            old, new = _item(old_section, key), _item(new_section, key)
            if old != new:
                changes.append(f"{section}[{key}]: {old!r} -> {new!r}" if isinstance(key, int)
                               else f"{section}.{key}: {old!r} -> {new!r}")
    raise SpaceError(
        f"{loaded.path}: study {loaded.space.study.name!r} in {masked(storage_url)} was run "
        "with another "
        f"definition, so its trials would not be comparable: {'; '.join(changes) or 'changed'}. "
        "Start a new study instead (--study NEW_NAME), or restore the space it was run with.")


def _keys(old: Any, new: Any) -> list[Any]:
    if isinstance(old, list) or isinstance(new, list):  # objectives: compared by position
        return list(range(max(len(old or []), len(new or []))))
    return sorted(set(old or {}) | set(new or {}))


def _item(section: Any, key: Any) -> Any:
    if isinstance(section, list):
        return section[key] if key < len(section) else None
    return (section or {}).get(key)


# ------------------------------------------------------------------------------ leases
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

