"""A sweep worker process: asks the shared study for trials and runs them until the budget is met.

Started by `python -m harness.sweep`, one per worker slot, with CUDA_VISIBLE_DEVICES and the
thread count already set in its environment (so they hold before torch is imported here).

SIGTERM / SIGINT: a trial that is training stops after its current step, writes its checkpoint,
is failed with the reason and re-enqueued, so the study holds no RUNNING trial and the retry
resumes from the checkpoint. Between trials the worker just stops.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from harness.core.runtime.memory_plan import default_budget
from harness.core.runtime.token_cache import keep_tokens
from harness.core.training.config import SaeTrainingConfig
from harness.core.training.results import TrainingInterrupted
from harness.sweep.budget import budget_state
from harness.sweep.downstream import preload_downstream
from harness.sweep.leases import Heartbeat, reap_locked, requeue
from harness.sweep.optuna_private import study_storage, trial_id
from harness.sweep.rungs import RungScheduler
from harness.sweep.space import LoadedSpace, load_space
from harness.sweep.space.rungs import trial_compute
from harness.sweep.storage import budget_lock, open_storage
from harness.sweep.study import STORAGE_ENV, make_pruner, make_sampler, worker_seed
from harness.sweep.trial import TrialOutcome, WorkerContext, run_trials

log = logging.getLogger("saesweep.worker")
EXIT_BAD_DATA = 3
"""The activation data failed every trial: the worker stopped."""
EXIT_NO_DEVICE = 4
"""The worker's device cannot be used: it stopped before asking for a trial."""
EXIT_UNWRITABLE = 5
"""An output location stopped accepting writes: the sweep stops rather than fail every trial."""


class _Signals:
    """Turns SIGTERM/SIGINT into a stop request that training polls after every batch (so the
    step in progress completes and a consistent checkpoint is written)."""

    def __init__(self) -> None:
        self.stop_requested: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # the first signal names the stop: a Ctrl-C reaches a worker from the terminal and
        # again from the sweep that forwards it
        if self.stop_requested is None:
            self.stop_requested = signal.Signals(signum).name

    def requested(self) -> str | None:
        return self.stop_requested


@dataclass
class _Worker:
    """What the worker's loop works with: the space, the study and its storage, the trials'
    context and the rungs' scheduler."""

    loaded: LoadedSpace
    study: optuna.Study
    storage: BaseStorage
    url: str
    ctx: WorkerContext
    rungs: RungScheduler | None
    per_trial: int
    """The tokens one trial plans (what the token budget charges); 0 without a token budget."""
    per_trial_compute: float = 0.0
    """Tokens x latents of the space's widest trial (what the compute budget holds back for a
    trial not yet finished); 0 without a compute budget."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="saesweep worker (started by python -m harness.sweep)")
    p.add_argument("--space", required=True, help="resolved space file written by the sweep")
    p.add_argument("--storage", help="default: $SAESWEEP_STORAGE (how the sweep passes it)")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--device", required=True, help="as this process addresses it")
    p.add_argument("--device-label", help="as the machine names it (recorded per trial)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--deadline", type=float, default=0.0, help="unix time; 0 = none")
    p.add_argument("--memory-budget", type=int, default=0,
                   help="host memory of each trial in bytes; 0 = the default of "
                        "harness.core.runtime.memory_plan")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker {args.index} %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # we drive Optuna's RDB heartbeat ourselves with ask/tell (harness.sweep.leases.Heartbeat)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    signals = _Signals()

    import torch  # after the environment is set by the parent

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    problem = _device_problem(torch, args.device)
    if problem is not None:  # a global cause: stop before any trial is asked for
        log.error("device %s (%s) cannot be used: %s", args.device, args.device_label, problem)
        return EXIT_NO_DEVICE
    worker = _open(args)
    if worker is None:
        return 2
    log.info("started pid=%d device=%s threads=%d", os.getpid(), args.device,
             torch.get_num_threads())
    return _loop(worker, args.deadline, signals)


def _open(args: argparse.Namespace) -> _Worker | None:
    """The space, the study (with this worker's sampler) and what every trial shares: one copy
    of the store's tokens and the downstream model, loaded once here. None without a storage."""
    loaded = load_space(args.space, read_heldout=False)  # the sweep checked it
    space = loaded.space
    # all of this worker's trials train from one copy of the store's tokens, read (and pinned)
    # once: a split kept across trials is the buffer a trial's plan sizes, so it counts in the
    # budget
    budget = args.memory_budget or default_budget()
    keep_tokens(min(int(1.5 * SaeTrainingConfig(**space.training).in_memory_bytes),
                    budget // 2))
    preload_downstream(loaded, args.device, Path(space.results_dir) / space.study.name)
    url = args.storage or os.environ.get(STORAGE_ENV)
    if not url:
        log.error("no storage: pass --storage or set %s", STORAGE_ENV)
        return None
    storage = open_storage(url, space.faults)
    n_existing = len(optuna.load_study(study_name=space.study.name, storage=storage).trials)
    study = optuna.load_study(
        study_name=space.study.name, storage=storage, pruner=make_pruner(loaded),
        sampler=make_sampler(loaded, worker_seed(space.study.seed, args.index + 1, n_existing)))
    ctx = WorkerContext(device=args.device, device_label=args.device_label or args.device,
                        worker_index=args.index, wandb_mode=space.wandb.mode,
                        results_dir=Path(space.results_dir) / space.study.name,
                        artifacts=space.artifacts, memory_budget=budget)
    return _Worker(loaded=loaded, study=study, storage=storage, url=url, ctx=ctx,
                   rungs=RungScheduler(loaded) if space.fidelity is not None else None,
                   per_trial=loaded.planned_tokens() if space.budget.tokens is not None else 0,
                   per_trial_compute=(trial_compute(loaded) if space.budget.compute is not None
                                      else 0.0))


def _loop(w: _Worker, deadline: float, signals: _Signals) -> int:
    """Reap, ask, run and tell until the budget is met, the deadline passes or a signal comes;
    the worker's exit status."""
    faults = w.loaded.space.faults
    while signals.stop_requested is None:
        reaped = reap_locked(w.study, w.url, faults.lease_s, faults.max_retry, w.storage)
        if reaped:
            log.info("reaped abandoned trials %s (re-enqueued)", reaped)
        if deadline and time.time() >= deadline:
            log.info("timeout reached")
            break
        trials, running = _ask(w)
        if not trials:
            if running:
                # a trial still running may yet be reaped and re-enqueued: stay to run it
                time.sleep(min(faults.heartbeat_s, 2.0))
                continue
            break
        outcomes = _run(w, trials, signals)
        if outcomes is None:
            break
        status = _tell(w, trials, outcomes)
        if status:
            return status
    log.info("stopping (%s)", signals.stop_requested or "budget met")
    return 0


def _ask(w: _Worker) -> tuple[list[optuna.Trial], int]:
    """This worker's next trials (up to `lockstep`), asked under the budget lock so that the
    budget is exact, and how many trials are running."""
    space = w.loaded.space
    with budget_lock(w.url, w.storage):
        budget = budget_state(w.study)
        if w.rungs is not None:  # the rungs' plan sizes every trial: nothing fresh besides
            w.rungs.enqueue(w.study, space.lockstep,
                            fresh_allowed=budget.hours_fit(space.budget.hours))
            budget, fresh = budget_state(w.study), 0
        else:
            fresh = min(space.lockstep, max(0, space.budget.n_trials - budget.used))
        while fresh and not (budget.tokens_fit(space.budget.tokens, w.per_trial, fresh)
                             and budget.compute_fit(space.budget.compute, w.per_trial_compute,
                                                    fresh)
                             and budget.hours_fit(space.budget.hours, fresh)):
            fresh -= 1  # the token, compute or hour budget has no room for another trial
        trials = [w.study.ask() for _ in range(min(space.lockstep, budget.waiting + fresh))]
    return trials, budget.running


def _run(w: _Worker, trials: list[optuna.Trial], signals: _Signals) -> list[TrialOutcome] | None:
    """The trials' outcomes, with their leases kept while they train; None when a signal stopped
    them (each is failed with the reason and re-enqueued to resume from its checkpoint)."""
    faults = w.loaded.space.faults
    beats = [Heartbeat(w.storage, trial_id(t), t.number, faults.heartbeat_s).start()
             for t in trials]
    try:
        return run_trials(trials, w.loaded, w.ctx, stop=signals.requested)
    except TrainingInterrupted as stop:
        for beat in beats:
            beat.stop()
        saved = f"; checkpoint at step(s) {sorted(stop.checkpoints.values())}" \
            if stop.checkpoints else ""
        for trial in trials:
            _requeue(w.study, trial, f"interrupted by {stop.reason}{saved}", faults.max_retry)
        log.info("trials %s interrupted by %s%s; re-enqueued", [t.number for t in trials],
                 stop.reason, saved)
        return None
    finally:
        for beat in beats:
            beat.stop()


def _tell(w: _Worker, trials: list[optuna.Trial], outcomes: list[TrialOutcome]) -> int | None:
    """Record the outcomes; the exit status when the worker must stop (unusable data, an
    output that takes no more writes), else None."""
    max_retry = w.loaded.space.faults.max_retry
    fatal = False
    unwritable: list[str] = []
    for trial, outcome in zip(trials, outcomes, strict=True):
        fatal = fatal or outcome.fatal
        try:
            w.study.tell(trial, outcome.values, state=outcome.state)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError) as e:
            # another worker reaped it (its lease ran out on a busy machine) and re-enqueued
            # its parameters: Optuna refuses to tell a finished trial ("Cannot tell a FAIL
            # trial"); this worker goes on
            log.warning("trial %d was reaped while running, result dropped: %s",
                        trial.number, e)
            continue
        log.info("trial %d %s %s", trial.number, outcome.state.name, outcome.summary)
        if outcome.unwritable:
            unwritable.append(outcome.unwritable)
        if outcome.requeue:  # trained but unsaved: its parameters run again, not spent
            again = requeue(w.study, study_storage(w.study).get_trial(trial_id(trial)),
                            max_retry)
            log.info("trial %d: %s", trial.number, "re-enqueued" if again else
                     f"not re-enqueued (faults.max_retry = {max_retry} used)")
    if fatal:
        log.error("stopping: the activation data is unusable (see the trials' fail_reason)")
        return EXIT_BAD_DATA
    if unwritable:
        log.error("stopping: cannot write to %s", ", ".join(sorted(set(unwritable))))
        return EXIT_UNWRITABLE
    return None


def _device_problem(torch: object, device: str) -> str | None:
    """Why this process cannot train on `device`, or None (a tensor is placed there to know)."""
    try:
        torch.zeros(1, device=device)  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 - any failure here means the device is unusable
        return f"{type(e).__name__}: {e}"
    return None


def _requeue(study: optuna.Study, trial: optuna.Trial, reason: str, max_retry: int) -> None:
    storage = study_storage(study)
    try:
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError) as e:
        log.warning("trial %d was reaped while running, already re-enqueued: %s",
                    trial.number, e)
        return
    requeue(study, storage.get_trial(trial_id(trial)), max_retry)


if __name__ == "__main__":
    sys.exit(main())
