"""The sweep's worker processes: started one per slot, watched until they exit (a line per
finished trial, a progress bar), and, when one stops abnormally, the cause named on the console
and the trial it left running released for a retry."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

import optuna
from tqdm.auto import tqdm

from harness.sweep.budget import BudgetState, own_trials, superseded_numbers
from harness.sweep.console import best_value, time_left, trial_line
from harness.sweep.devices import WorkerSlot
from harness.sweep.leases import reap_locked
from harness.sweep.rungs import trial_total
from harness.sweep.space import LoadedSpace
from harness.sweep.study import STORAGE_ENV
from harness.sweep.worker import EXIT_BAD_DATA, EXIT_NO_DEVICE, EXIT_UNWRITABLE

_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit)\b.*?: .+")
FULL_DISK_BYTES = 1 << 20
"""Less free space than this on the results' disk is called full."""


@dataclass
class Workers:
    """The worker processes of one sweep invocation and their log files."""

    procs: list[subprocess.Popen]
    logs: list[Path]
    url: str
    """The study's storage."""


def start_workers(slots: list[WorkerSlot], space_file: Path, storage: str,
                  out: Path, deadline: float, memory_budget: int) -> Workers:
    """One `harness.sweep.worker` process per slot, each logging to its own file."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # one log per worker per invocation: two sweeps on one study never share a file
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    run = f"{stamp}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    procs, paths = [], []
    for i, slot in enumerate(slots):
        # the URL travels in the environment: not in `ps`, the logs or the resolved space
        env = {**os.environ, **slot.env, STORAGE_ENV: storage}
        cmd = [sys.executable, "-m", "harness.sweep.worker", "--space", str(space_file),
               "--index", str(i), "--device", slot.device,
               "--device-label", slot.label, "--threads", str(slot.threads),
               "--deadline", str(deadline), "--memory-budget", str(memory_budget)]
        paths.append(logs / f"{run}_worker_{i}.log")
        with open(paths[-1], "a", encoding="utf-8") as log:  # the worker holds its own copy
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return Workers(procs, paths, storage)


class _Progress:
    """The console's view of the study: a line per trial as it finishes, with what is spent
    and the time left, and the progress bar."""

    def __init__(self, study: optuna.Study, loaded: LoadedSpace) -> None:
        self.study, self.loaded = study, loaded
        self.n_trials = trial_total(loaded)
        self.seen: set[int] = set()
        self.earlier: set[int] = set()  # finished before this run
        self.spent = BudgetState(used=0, waiting=0, running=0)  # what the printed trials spent
        self.started = time.perf_counter()
        self.done_before: int | None = None  # finished by earlier runs (not part of the rate)
        self.bar = tqdm(total=self.n_trials, unit="trial", dynamic_ncols=True, file=sys.stderr,
                        disable=not sys.stderr.isatty())

    def poll(self) -> None:
        trials = own_trials(self.study)
        superseded = superseded_numbers(trials)
        done = sum(1 for t in trials if t.state.is_finished() and t.number not in superseded)
        if self.done_before is None:  # finished by earlier runs: said once, not line by line
            self.done_before = done
            for t in trials:
                if t.state.is_finished():
                    self.seen.add(t.number)
                    self.earlier.add(t.number)
                    self.spent = self.spent.after(t)
            if done:
                tqdm.write(f"resuming: {done} of {self.n_trials} trials finished in earlier runs")
        budget = self.loaded.space.budget
        new = [t for t in sorted(trials, key=lambda t: t.number)
               if t.state.is_finished() and t.number not in self.seen]
        for i, t in enumerate(new):
            self.seen.add(t.number)
            self.spent = self.spent.after(t)
            done_then = done - (len(new) - 1 - i)  # several may finish between two polls
            left = self.spent.describe(budget)
            tqdm.write(trial_line(t, self.loaded)
                       + time_left(done_then, self.done_before, self.n_trials, self.started)
                       + (f" ({left})" if left else ""))
        self.bar.n = min(done, self.n_trials)
        best = best_value(self.study, self.loaded)
        if best is not None:
            self.bar.set_postfix_str(best)
        self.bar.refresh()


def monitor(study: optuna.Study, workers: Workers, loaded: LoadedSpace) -> int:
    """Print a line per finished trial and a progress bar until every worker has exited; then
    the sweep's exit status, with the reason for any stop on the console."""
    procs = workers.procs
    stop: list[str] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stop.append(signal.Signals(signum).name)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)  # the same signal: every worker names the same stop

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    progress = _Progress(study, loaded)
    try:
        while True:
            alive = [p for p in procs if p.poll() is None]
            progress.poll()
            if not alive:
                break
            time.sleep(0.5)
    finally:
        progress.bar.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    return _exit_status(study, workers, loaded, stop, progress.earlier)


def _exit_status(study: optuna.Study, workers: Workers, loaded: LoadedSpace, stop: list[str],
                 earlier: set[int]) -> int:
    """The sweep's exit status from its workers' (and a forwarded signal), with the reason for
    any stop on the console."""
    codes = [p.returncode for p in workers.procs]
    if stop:
        print(f"stopped by {stop[0]}; the study is consistent: re-run the same command to "
              "continue")
        return 130 if stop[0] == "SIGINT" else 143
    if EXIT_BAD_DATA in codes:
        print("stopped: the activation data is unusable (see the failed trials above); fix the "
              "store, then re-run the same command", file=sys.stderr)
        return 1
    if EXIT_UNWRITABLE in codes:
        print("stopped: an output location stopped accepting writes (see the failed trial above "
              f"and the logs folder); {unsaved(study, loaded, earlier)}; fix it, then re-run "
              "the same command", file=sys.stderr)
        return 1
    if EXIT_NO_DEVICE in codes:
        print("stopped: a worker could not use its device (see the logs folder); re-run with "
              "--devices naming usable ones", file=sys.stderr)
        return 1
    crashed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if crashed:
        causes = [f"worker {i} (exit {c}): {crash_cause(workers.logs[i])}" for i, c in crashed]
        print("stopped: " + "; ".join(causes) + disk_note(workers.logs[0].parent),
              file=sys.stderr)
        print(release_abandoned(study, loaded, workers.url) + "; the logs folder has the full "
              "output. Re-run the same command to continue.", file=sys.stderr)
        return 1
    return 0


def unsaved(study: optuna.Study, loaded: LoadedSpace, earlier: set[int]) -> str:
    """What became of this run's trials whose SAE could not be saved: re-enqueued (their weights
    kept where the fail reason says), or dropped once their configuration used
    faults.max_retry. `earlier`: trials finished before this run."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.number not in earlier]
    retried = superseded_numbers(trials)
    unsaved = [t for t in trials if t.state == optuna.trial.TrialState.FAIL
               and str(t.user_attrs.get("fail_reason", "")).startswith("save failed")]
    again = [t.number for t in unsaved if t.number in retried]
    dropped = [t.number for t in unsaved if t.number not in retried]
    parts = []
    if again:
        parts.append(f"trial(s) {again} could not be saved and were re-enqueued (their weights "
                     "are kept where the fail reason says)")
    if dropped:
        parts.append(f"trial(s) {dropped} could not be saved and were NOT re-enqueued: their "
                     f"configuration had its faults.max_retry = {loaded.space.faults.max_retry} "
                     "retries (their weights are kept where the fail reason says)")
    return "; ".join(parts) or "no trial was lost"


def crash_cause(log: Path) -> str:
    """The last exception line a crashed worker logged ("OSError: [Errno 28] No space left on
    device: ..."), else what is known."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            tail = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError as e:
        return f"its log {log} cannot be read ({e.strerror or e})"
    for line in reversed(tail):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()
    return f"no error in its log ({log}); it may have been killed from outside"


def disk_note(folder: Path) -> str:
    """" (the disk holding F is full: N bytes free)" when it is, else ""."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" (the disk holding {folder} is full: {free} bytes free)" \
        if free < FULL_DISK_BYTES else ""


def release_abandoned(study: optuna.Study, loaded: LoadedSpace, url: str) -> str:
    """Fail and re-enqueue the trials the crashed workers left RUNNING (their processes are gone),
    and say so; if the storage cannot be written either, say the next run will."""
    faults = loaded.space.faults
    try:
        reaped = reap_locked(study, url, faults.lease_s, faults.max_retry)
    except Exception as e:  # noqa: BLE001 - a full disk or a lost server: say it, lose nothing
        return (f"the trials left running could not be released now ({type(e).__name__}: {e}); "
                "the next run re-enqueues them")
    if not reaped:
        return "no trial was left running"
    return f"trial(s) {reaped}, left running, were failed and re-enqueued"
