"""`python -m harness.sweep [SPACE.yaml]`: run (or resume) an SAE hyperparameter sweep.

The parent process validates the space (exit 2 on any mistake, nothing written), generates
synthetic data if the space asks for it, creates the study once, reaps trials abandoned by a
previous run, then starts one worker process per slot (`--workers N`, or one per device with
`--devices`) on the shared storage and reports progress from the storage until they finish.
Re-running the same command continues the study.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from harness.core.atomic import write_text
from harness.core.paths import unwritable
from harness.core.store import open_store
from harness.core.wandb_log import has_api_key
from harness.data.synthetic import write_synthetic_store
from harness.errors import SaesweepError
from harness.sweep.arguments import EXIT_BAD_SPACE, build_parser
from harness.sweep.artifacts import default_location, s3_problem
from harness.sweep.budget import BudgetState, budget_state
from harness.sweep.console import print_summary
from harness.sweep.devices import (
    DeviceError,
    WorkerSlot,
    parse_devices,
    visible_gpu_count,
    worker_slots,
)
from harness.sweep.downstream import check_downstream, save_reference
from harness.sweep.latent_tasks import check_latent_tasks, share_model
from harness.sweep.leases import reap_locked
from harness.sweep.monitor import monitor, start_workers
from harness.sweep.packing import check_host_memory, check_packing, cuda_memory, worker_budget
from harness.sweep.rungs import plan_line, trial_total
from harness.sweep.space import LoadedSpace, SpaceError, load_space, synthetic_spec
from harness.sweep.space.rungs import check_budget, check_fidelity, rung_plan, trial_compute
from harness.sweep.storage import prepare_storage
from harness.sweep.study import create_study, default_storage, storage_url, warm_start_plan
from harness.sweep.urls import masked

QUICKSTART = "quickstart.yaml"


def find_quickstart() -> Path:
    """The embedded default space: search_spaces/quickstart.yaml of this checkout."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / "search_spaces" / QUICKSTART
        if candidate.exists():
            return candidate
    raise SpaceError(f"search_spaces/{QUICKSTART} not found next to the harness package or in "
                     f"{Path.cwd()}; pass a space file")


@dataclass
class _Checked:
    """What the checks before anything is written found: the space, the worker slots and their
    memory, the storage and what its preparation said, warm-start sources and the downstream
    reference's evaluator."""

    loaded: LoadedSpace
    slots: list[WorkerSlot]
    memory: int
    url: str
    repaired: str | None
    sources: list
    downstream: Any

    @property
    def out(self) -> Path:
        space = self.loaded.space
        return Path(space.results_dir) / space.study.name


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:  # every check that needs no writing comes first: a mistake leaves nothing behind
        checked = _check(args)
    except SaesweepError as e:  # a space, device, storage or memory that cannot be used
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_SPACE
    try:
        study = _prepare(checked)
    except SaesweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_SPACE
    if _nothing_to_run(study, checked):
        return 0
    return _run(study, checked)


def _check(args: argparse.Namespace) -> _Checked:
    """Every check that writes nothing, the slowest (loading the downstream model) last."""
    space_path = Path(args.space) if args.space else find_quickstart()
    loaded = load_space(space_path, overrides=_overrides(args))
    if args.workers and args.trials_per_device:
        raise DeviceError("--workers and --trials-per-device: give one (--workers spreads N "
                          "workers over the GPUs, --trials-per-device puts M on each)")
    slots = _slots(args.devices, loaded.space.workers, args.trials_per_device)
    check_packing(slots, loaded, cuda_memory)
    memory = worker_budget(loaded, slots)
    check_host_memory(slots, loaded, memory)
    space = loaded.space
    check_writable(Path(space.results_dir), "--results / results_dir")
    for sub in ("trials", "logs", "checkpoints"):  # a trial's SAE goes under trials/
        check_writable(Path(space.results_dir) / space.study.name / sub,
                       "--results / results_dir")
    _resolve_artifacts(loaded)
    url = storage_url(args.storage, space.study.storage, default_storage(loaded))
    repaired = prepare_storage(url)
    sources = warm_start_plan(loaded, url)
    downstream = check_downstream(loaded, Path(space.results_dir) / space.study.name)
    if downstream is not None:
        share_model(downstream.cfg.model, downstream.cfg.device, downstream.lm)
    check_latent_tasks(loaded)
    return _Checked(loaded=loaded, slots=slots, memory=memory, url=url, repaired=repaired,
                    sources=sources, downstream=downstream)


def _prepare(checked: _Checked) -> optuna.Study:
    """Synthetic data if the space asks for it, the study (warm-started), the downstream
    reference and the resolved space the workers load; SaesweepError where the data, once it
    exists, cannot pay for the plan."""
    loaded, space = checked.loaded, checked.loaded.space
    if checked.repaired:
        print(checked.repaired)
    if space.wandb.mode == "online" and not has_api_key():
        space.wandb.mode = "offline"  # what the workers read from space.resolved.yaml
        loaded.raw.setdefault("wandb", {})["mode"] = "offline"
        print(f"W&B: no API key here, so the trial runs are written offline to "
              f"{checked.out / 'wandb'}/ (upload them later with wandb sync)")
    _ensure_data(loaded)
    check_fidelity(loaded.path, loaded, check_data=True)  # synthetic data: now it exists
    check_budget(loaded.path, loaded, check_data=True)
    study = create_study(loaded, checked.url, checked.sources)
    warm = study.user_attrs.get("warm_started")
    if warm:
        lower = warm.get("lower_rungs", 0)
        print(f"warm start: {warm['trials']} complete trial(s) of {', '.join(warm['from'])}"
              + (f" ({lower} of lower token rungs left out: not full results)" if lower else ""))
    downstream = checked.downstream
    if downstream is not None:
        path = save_reference(downstream)
        w = downstream.reference.windows
        print(f"downstream: every finished SAE is spliced into {downstream.cfg.model} at "
              f"{downstream.cfg.layer}, scored on {w.n_kept} tokens of {w.ids.shape[0]} windows "
              f"({w.description}); reference passes in {path}")
        checked.downstream = None  # the workers load the model themselves
    # what the workers load: the file with the command-line overrides applied
    write_text(checked.out / "space.resolved.yaml",
               yaml.safe_dump(loaded.raw_masked(), sort_keys=False))
    return study


def _nothing_to_run(study: optuna.Study, checked: _Checked) -> bool:
    """Re-enqueue trials an earlier run abandoned; True (after the summary) when the study's
    budget is already spent."""
    loaded, space = checked.loaded, checked.loaded.space
    reaped = reap_locked(study, checked.url, space.faults.lease_s, space.faults.max_retry)
    if reaped:
        print(f"re-enqueued trials abandoned by an earlier run: {reaped}")
    budget, total = budget_state(study), trial_total(loaded)
    spent = _spent_budgets(budget, loaded)
    if budget.waiting or budget.running or (budget.used < total and not spent):
        return False
    left = budget.describe(space.budget)
    held = (f"spent its {spent[0]} budget ({left})" if spent
            else f"{budget.used} of its {total} trials")
    raise_it = f"budget.{BUDGET_KEYS[spent[0]]}" if spent else "--n-trials"
    print(f"study {space.study.name!r} already has {held}: nothing to run (raise "
          f"{raise_it} to run more)")
    print_summary(study, loaded, checked.url, checked.out)
    return True


def _run(study: optuna.Study, checked: _Checked) -> int:
    """Start the workers, follow them to the end, and say why the sweep stopped."""
    loaded, space, slots = checked.loaded, checked.loaded.space, checked.slots
    total = trial_total(loaded)
    print(f"study {space.study.name!r}: storage {masked(checked.url)}, {plan_line(loaded)}, "
          f"{len(slots)} worker(s) on {', '.join(s.label for s in slots)} with "
          f"{checked.memory / 2**30:.1f} GiB of host memory each; results in {checked.out}/")
    if space.fidelity is not None and (note := rung_plan(loaded).note):
        print(note)
    deadline = time.time() + space.budget.timeout if space.budget.timeout else 0.0
    workers = start_workers(slots, checked.out / "space.resolved.yaml", checked.url,
                            checked.out, deadline, checked.memory)
    status = monitor(study, workers, loaded)
    print_summary(study, loaded, checked.url, checked.out)
    budget = budget_state(study)
    if status == 0 and deadline and time.time() >= deadline and budget.used < total:
        print(f"stopped: the timeout of {space.budget.timeout:g} s was reached with "
              f"{budget.used} of {total} trials run; re-run the same command "
              "to continue")
    elif status == 0 and budget.used < total and (spent := _spent_budgets(budget, loaded)):
        print(f"stopped: the {spent[0]} budget is spent "
              f"({budget.describe(space.budget)}) with {budget.used} "
              f"of {total} trials run; raise budget.{BUDGET_KEYS[spent[0]]} to run more")
    return status


def _spent_budgets(budget: BudgetState, loaded: LoadedSpace) -> list[str]:
    """The budgets ("token", "compute", "hour") with no room for another trial. A rung study's
    plan is sized by its token and compute budgets, so only its hours can run out."""
    space = loaded.space
    rungs = space.fidelity is not None
    tokens = rungs or budget.tokens_fit(space.budget.tokens, loaded.planned_tokens()
                                        if space.budget.tokens else 0)
    compute = rungs or budget.compute_fit(space.budget.compute, trial_compute(loaded)
                                          if space.budget.compute else 0)
    return [name for name, fits in (("token", tokens), ("compute", compute),
                                    ("hour", budget.hours_fit(space.budget.hours))) if not fits]


BUDGET_KEYS = {"token": "tokens", "compute": "compute", "hour": "hours"}
"""The budget: key of each budget by the name the console gives it."""


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
