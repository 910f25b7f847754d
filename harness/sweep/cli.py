"""`python -m harness.sweep [SPACE.yaml]`: run (or resume) an SAE hyperparameter sweep.

The parent process validates the space (exit 2 on any mistake, nothing written), generates
synthetic data if the space asks for it, creates the study once, reaps trials abandoned by a
previous run, then starts one worker process per slot (`--workers N`, or one per device with
`--devices`) on the shared storage and reports progress from the storage until they finish.
Re-running the same command continues the study.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

import optuna
import yaml
from tqdm.auto import tqdm

from harness.core.atomic import write_text
from harness.core.paths import unwritable
from harness.core.store import open_store
from harness.core.wandb_log import has_api_key
from harness.data.synthetic import write_synthetic_store
from harness.sweep.artifacts import default_location, s3_problem
from harness.sweep.budget import BudgetState, budget_state, superseded_numbers, warm_started
from harness.sweep.console import best_value, print_summary, time_left, trial_line
from harness.sweep.devices import (
    DeviceError,
    WorkerSlot,
    parse_devices,
    visible_gpu_count,
    worker_slots,
)
from harness.sweep.downstream import check_downstream, save_reference
from harness.sweep.fidelity import plan_line, trial_total
from harness.sweep.packing import check_packing, cuda_memory
from harness.sweep.space import LoadedSpace, SpaceError, load_space, synthetic_spec
from harness.sweep.space.fidelity import check_fidelity
from harness.sweep.storage import prepare_storage
from harness.sweep.study import (
    STORAGE_ENV,
    create_study,
    default_storage,
    reap_stale,
    storage_url,
    warm_start_plan,
)
from harness.sweep.urls import masked
from harness.sweep.worker import EXIT_BAD_DATA, EXIT_NO_DEVICE, EXIT_UNWRITABLE

EXIT_BAD_SPACE = 2
QUICKSTART = "quickstart.yaml"


def find_quickstart() -> Path:
    """The embedded default space: search_spaces/quickstart.yaml of this checkout."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / "search_spaces" / QUICKSTART
        if candidate.exists():
            return candidate
    raise SpaceError(f"search_spaces/{QUICKSTART} not found next to the harness package or in "
                     f"{Path.cwd()}; pass a space file")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.sweep",
        description="Run or resume a sweep of TopK SAEs declared in a search-space YAML file. "
                    "Re-running the same command continues the study where it stopped.")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:  # every check that needs no writing comes first: a mistake leaves nothing behind
        space_path = Path(args.space) if args.space else find_quickstart()
        loaded = load_space(space_path, overrides=_overrides(args))
        if args.workers and args.trials_per_device:
            raise DeviceError("--workers and --trials-per-device: give one (--workers spreads N "
                              "workers over the GPUs, --trials-per-device puts M on each)")
        slots = _slots(args.devices, loaded.space.workers, args.trials_per_device)
        check_packing(slots, loaded, cuda_memory)
        space = loaded.space
        check_writable(Path(space.results_dir), "--results / results_dir")
        for sub in ("trials", "logs", "checkpoints"):  # a trial's SAE goes under trials/
            check_writable(Path(space.results_dir) / space.study.name / sub,
                           "--results / results_dir")
        _resolve_artifacts(loaded)
        url = storage_url(args.storage, space.study.storage, default_storage(loaded))
        repaired = prepare_storage(url)
        sources = warm_start_plan(loaded, url)
        # loads the model: the slowest check goes last
        downstream = check_downstream(loaded, Path(space.results_dir) / space.study.name)
    except (SpaceError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_SPACE
    if repaired:
        print(repaired)
    if space.wandb.mode == "online" and not has_api_key():
        space.wandb.mode = "offline"  # what the workers read from space.resolved.yaml
        loaded.raw.setdefault("wandb", {})["mode"] = "offline"
        print(f"W&B: no API key here, so the trial runs are written offline to "
              f"{Path(space.results_dir) / space.study.name / 'wandb'}/ (upload them later with "
              "wandb sync)")
    out = Path(space.results_dir) / space.study.name
    _ensure_data(loaded)
    try:
        check_fidelity(loaded.path, loaded, check_data=True)  # synthetic data: now it exists
        study = create_study(loaded, url, sources)
    except SpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_SPACE
    warm = study.user_attrs.get("warm_started")
    if warm:
        lower = warm.get("lower_rungs", 0)
        print(f"warm start: {warm['trials']} complete trial(s) of {', '.join(warm['from'])}"
              + (f" ({lower} of lower token rungs left out: not full results)" if lower else ""))
    if downstream is not None:
        path = save_reference(downstream)
        w = downstream.reference.windows
        print(f"downstream: every finished SAE is spliced into {downstream.cfg.model} at "
              f"{downstream.cfg.layer}, scored on {w.n_kept} tokens of {w.ids.shape[0]} windows "
              f"({w.description}); reference passes in {path}")
        del downstream  # the workers load the model themselves
    # what the workers load: the file with the command-line overrides applied
    resolved = out / "space.resolved.yaml"
    write_text(resolved, yaml.safe_dump(loaded.raw_masked(), sort_keys=False))

    reaped = reap_stale(study, space.faults.lease_s, space.faults.max_retry)
    if reaped:
        print(f"re-enqueued trials abandoned by an earlier run: {reaped}")
    budget, total = budget_state(study), trial_total(loaded)
    spent = [name for name, fits in (  # rungs: their plan is sized by the token budget
        ("token", space.fidelity is not None or budget.tokens_fit(
            space.budget.tokens, loaded.planned_tokens() if space.budget.tokens else 0)),
        ("hour", budget.hours_fit(space.budget.hours))) if not fits]
    if budget.waiting == 0 and budget.running == 0 and (budget.used >= total or spent):
        left = budget.describe(space.budget.tokens, space.budget.hours)
        held = (f"spent its {spent[0]} budget ({left})" if spent
                else f"{budget.used} of its {total} trials")
        raise_it = f"budget.{spent[0]}s" if spent else "--n-trials"
        print(f"study {space.study.name!r} already has {held}: nothing to run (raise "
              f"{raise_it} to run more)")
        print_summary(study, loaded, url, out)
        return 0
    print(f"study {space.study.name!r}: storage {masked(url)}, {plan_line(loaded)}, "
          f"{len(slots)} worker(s) on {', '.join(s.label for s in slots)}; results in {out}/")
    deadline = time.time() + space.budget.timeout if space.budget.timeout else 0.0
    procs = _start_workers(slots, resolved, url, out, deadline)
    status = _monitor(study, procs, loaded)
    print_summary(study, loaded, url, out)
    budget = budget_state(study)
    if status == 0 and deadline and time.time() >= deadline and budget.used < total:
        print(f"stopped: the timeout of {space.budget.timeout:g} s was reached with "
              f"{budget.used} of {total} trials run; re-run the same command "
              "to continue")
    return status


def _resolve_artifacts(loaded: LoadedSpace) -> None:
    """Fix the artifact location as an absolute path (workers and other nodes read it from the
    resolved space and the trial records), checked like --results."""
    space = loaded.space
    location = space.artifacts or default_location(space.results_dir, space.study.name)
    if location.startswith("s3://"):
        problem = s3_problem(location)
        if problem:
            raise SpaceError(f"--artifacts / artifacts: {location}: {problem}")
    else:
        location = str(Path(location).resolve())
        check_writable(Path(location), "--artifacts / artifacts")
    space.artifacts = location
    loaded.raw["artifacts"] = location


def _slots(devices_arg: str | None, n_workers: int,
           per_device: int | None) -> list[WorkerSlot]:
    gpus = visible_gpu_count()
    devices = parse_devices(devices_arg, gpus) if devices_arg is not None else None
    return worker_slots(devices, n_workers, gpus, per_device)


def check_writable(folder: Path, what: str) -> None:
    """A SpaceError naming `what` unless files can be written in `folder`."""
    problem = unwritable(folder)
    if problem:
        raise SpaceError(f"{what}: {problem}")


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, object] | object]:
    """Command-line flags as a partial space, validated together with the file."""
    out: dict[str, dict[str, object] | object] = {}
    if args.n_trials:
        out["budget"] = {"n_trials": args.n_trials}
    if args.timeout is not None:
        out.setdefault("budget", {})["timeout"] = args.timeout  # type: ignore[index]
    if args.study:
        out["study"] = {"name": args.study}
    if args.wandb:
        out["wandb"] = {"mode": args.wandb}
    if args.results:
        out["results_dir"] = args.results
    if args.lockstep:
        out["lockstep"] = args.lockstep
    if args.artifacts:
        out["artifacts"] = args.artifacts
    if args.workers:
        out["workers"] = args.workers
    return out


def _ensure_data(loaded: LoadedSpace) -> None:
    data = loaded.space.data
    if data.synthetic is None or not data.synthetic_pending():
        return
    store = open_store(data.store)
    spec = synthetic_spec(data.synthetic)
    print(f"generating synthetic activations ({spec.n_tokens} tokens, d={spec.d}) into "
          f"{store.activation_dir(data.run_id)}")
    write_synthetic_store(data.store, data.run_id, spec, layer_signature=data.layer_signature)


def _start_workers(slots: list[WorkerSlot], space_file: Path, storage: str,
                   out: Path, deadline: float) -> list[subprocess.Popen]:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # one log per worker per invocation: two sweeps on one study never share a file
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    run = f"{stamp}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    procs = []
    for i, slot in enumerate(slots):
        # the URL travels in the environment: not in `ps`, the logs or the resolved space
        env = {**os.environ, **slot.env, STORAGE_ENV: storage}
        cmd = [sys.executable, "-m", "harness.sweep.worker", "--space", str(space_file),
               "--index", str(i), "--device", slot.device,
               "--device-label", slot.label, "--threads", str(slot.threads),
               "--deadline", str(deadline)]
        log = open(logs / f"{run}_worker_{i}.log", "a", encoding="utf-8")  # noqa: SIM115 - kept
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _monitor(study: optuna.Study, procs: list[subprocess.Popen], loaded: LoadedSpace) -> int:
    """Print a line per finished trial and a progress bar until every worker has exited."""
    stop: list[str] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stop.append(signal.Signals(signum).name)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)  # the same signal: every worker names the same stop

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    n_trials = trial_total(loaded)
    seen: set[int] = set()
    earlier: set[int] = set()  # finished before this run
    spent = BudgetState(used=0, waiting=0, running=0)  # what the trials printed so far spent
    started = time.perf_counter()
    done_before: int | None = None  # trials finished by earlier runs (not part of the rate)
    bar = tqdm(total=n_trials, unit="trial", dynamic_ncols=True, file=sys.stderr,
               disable=not sys.stderr.isatty())
    try:
        while True:
            alive = [p for p in procs if p.poll() is None]
            trials = [t for t in study.get_trials(deepcopy=False) if not warm_started(t)]
            superseded = superseded_numbers(trials)
            done = sum(1 for t in trials if t.state.is_finished() and t.number not in superseded)
            if done_before is None:  # finished by earlier runs: said once, not line by line
                done_before = done
                for t in trials:
                    if t.state.is_finished():
                        seen.add(t.number)
                        earlier.add(t.number)
                        spent = spent.after(t)
                if done:
                    tqdm.write(f"resuming: {done} of {n_trials} trials finished in earlier runs")
            new = [t for t in sorted(trials, key=lambda t: t.number)
                   if t.state.is_finished() and t.number not in seen]
            for i, t in enumerate(new):
                seen.add(t.number)
                spent = spent.after(t)
                done_then = done - (len(new) - 1 - i)  # several may finish between two polls
                left = spent.describe(loaded.space.budget.tokens, loaded.space.budget.hours)
                tqdm.write(trial_line(t, loaded)
                           + time_left(done_then, done_before, n_trials, started)
                           + (f" ({left})" if left else ""))
            bar.n = min(done, n_trials)
            best = best_value(study, loaded)
            if best is not None:
                bar.set_postfix_str(best)
            bar.refresh()
            if not alive:
                break
            time.sleep(0.5)
    finally:
        bar.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    codes = [p.returncode for p in procs]
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
              f"and the logs folder); {_unsaved(study, loaded, earlier)}; fix it, then re-run the same "
              "command", file=sys.stderr)
        return 1
    if EXIT_NO_DEVICE in codes:
        print("stopped: a worker could not use its device (see the logs folder); re-run with "
              "--devices naming usable ones", file=sys.stderr)
        return 1
    crashed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if crashed:
        print(f"worker(s) exited abnormally: {crashed}; see the logs folder. Re-run the same "
              "command to continue (abandoned trials are re-enqueued).", file=sys.stderr)
        return 1
    return 0


def _unsaved(study: optuna.Study, loaded: LoadedSpace, earlier: set[int]) -> str:
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

