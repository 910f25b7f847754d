"""One sweep trial: sample, train through the shared trainer, prune, record, save.

Pruning rules, applied at every evaluation after their warm-up:
- dead features: dead_ratio above `max_ratio` (single- and multi-objective);
- R² floor: held-out R² below `min_r2` (single- and multi-objective);
- Optuna's pruner on the first objective, reported with `trial.report(value, step)` (single-
  objective only: Optuna does not prune multi-objective trials).
Which rule fired, at which step and with which values is stored in the trial's user attributes.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.atomic import write_json
from harness.metrics import feature_recovery
from harness.sae import TopKSae
from harness.space import LoadedSpace, TrialSetup
from harness.store import StoreError
from harness.synthetic import has_ground_truth, load_ground_truth
from harness.train import (
    EvalResult,
    LockstepMember,
    MemberOutcome,
    SaeTrainer,
    StopTraining,
    TrainingDiverged,
)

# user attributes that describe an outcome: reset at the start of every trial, since a retry
# inherits the attributes of the trial it replaces
OUTCOME_ATTRS = ("fail_reason", "prune_rule", "prune_reason", "prune_step", "prune_tokens",
                 "prune_values")


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an Exception
    """SIGTERM/SIGINT arrived while a trial was training."""


@dataclass(frozen=True)
class WorkerContext:
    """Where and how this worker runs its trials."""

    device: str
    worker_index: int
    wandb_mode: str
    results_dir: Path
    """results/<study>/"""


@dataclass(frozen=True)
class TrialOutcome:
    """What to tell the study."""

    state: TrialState
    values: list[float] | None
    summary: str
    fatal: bool = False
    """The worker must stop after telling this (bad data would fail every trial)."""


class PruningCallback:
    """Applies the space's pruning rules at each evaluation; raises StopTraining to prune."""

    def __init__(self, trial: optuna.Trial, loaded: LoadedSpace) -> None:
        self.trial = trial
        self.rules = loaded.space.pruner
        objective = loaded.space.objectives[0].metric
        self.report_metric = (objective if not loaded.space.multi_objective
                              and objective in ("r2", "fvu", "mse", "l0", "dead_ratio") else None)
        self.pruner_name = loaded.space.pruner.type

    def __call__(self, r: EvalResult) -> None:
        dead = self.rules.dead_features
        if dead is not None and r.step >= dead.warmup_steps and r.dead_ratio > dead.max_ratio:
            self._prune("dead_features", r, {"dead_ratio": r.dead_ratio,
                                             "max_ratio": dead.max_ratio})
        floor = self.rules.r2_floor
        if floor is not None and r.step >= floor.warmup_steps and not r.r2 >= floor.min_r2:
            self._prune("r2_floor", r, {"r2": r.r2, "min_r2": floor.min_r2})
        if self.report_metric is not None:
            value = float(getattr(r, self.report_metric))
            self.trial.report(value, r.step)
            if self.trial.should_prune():
                self._prune(self.pruner_name, r, {self.report_metric: value})

    def _prune(self, rule: str, r: EvalResult, values: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        reason = f"{rule} at step {r.step} ({r.tokens} tokens): {shown}"
        for key, value in (("prune_rule", rule), ("prune_reason", reason),
                           ("prune_step", r.step), ("prune_tokens", r.tokens),
                           ("prune_values", values)):
            self.trial.set_user_attr(key, value)
        raise StopTraining(reason)


@dataclass
class _Prepared:
    """A trial ready to train: its setup and the trainer member built from it."""

    trial: optuna.Trial
    setup: TrialSetup
    member: LockstepMember
    trial_dir: Path
    start: float


def run_trials(trials: list[optuna.Trial], loaded: LoadedSpace, ctx: WorkerContext,
               guard: Any) -> list[TrialOutcome]:
    """Train several configurations in lockstep on the same batches (one when len == 1).

    Each trial is still sampled, pruned, failed, recorded and saved on its own. `guard` is a
    context manager marking the interruptible part (the worker's signal handling).
    """
    space = loaded.space
    outcomes: dict[int, TrialOutcome] = {}
    prepared: list[_Prepared] = []
    for trial in trials:
        item = _prepare(trial, loaded, ctx)
        if isinstance(item, TrialOutcome):
            outcomes[trial.number] = item
        else:
            prepared.append(item)
    if prepared:
        try:
            with guard:
                results = SaeTrainer.train_lockstep(
                    space.data.store, space.data.run_id, space.data.layer_signature,
                    [p.member for p in prepared])
        except StoreError as e:  # bad data fails every trial: record it, then stop the worker
            for p in prepared:
                outcomes[p.trial.number] = _fail(p.trial, p.trial_dir, f"bad data: {e}",
                                                 p.start, p.setup, fatal=True)
        else:
            for p, result in zip(prepared, results, strict=True):
                outcomes[p.trial.number] = _finish(p, result, loaded)
    return [outcomes[t.number] for t in trials]


def _prepare(trial: optuna.Trial, loaded: LoadedSpace,
             ctx: WorkerContext) -> _Prepared | TrialOutcome:
    space = loaded.space
    for key in OUTCOME_ATTRS:
        trial.set_user_attr(key, None)
    trial_dir = ctx.results_dir / "trials" / f"{trial.number:04d}"
    start = time.perf_counter()
    base_attrs = {"device": ctx.device, "worker": ctx.worker_index, "host": socket.gethostname(),
                  "trial_dir": str(trial_dir)}
    for key, value in base_attrs.items():
        trial.set_user_attr(key, value)
    try:
        setup = loaded.setup(trial)
    except ValueError as e:
        return _fail(trial, trial_dir, f"invalid configuration: {e}", start)
    for key, value in (("n_latents", setup.n_latents), ("k", setup.k), ("lr", setup.lr),
                       ("expansion", setup.expansion), ("activation", setup.activation)):
        trial.set_user_attr(key, value)
    cfg = dataclasses.replace(
        setup.config, device=ctx.device, progress=False, use_wandb=ctx.wandb_mode != "off",
        wandb_mode=None if ctx.wandb_mode == "off" else ctx.wandb_mode,
        wandb_project=space.wandb.project, wandb_group=space.study.name, wandb_job_type="trial",
        wandb_run_name=f"{space.study.name}-trial-{trial.number:04d}",
        wandb_dir=str(ctx.results_dir))
    extra = {"study": space.study.name, "trial_number": trial.number,
             "params": setup.sampled, "n_latents": setup.n_latents, "k": setup.k,
             "expansion": setup.expansion, "lr": setup.lr, "activation": setup.activation}
    sae = TopKSae(setup.n_latents, loaded.d, setup.k, device=ctx.device,
                  seed=cfg.seed * 1_000_003 + trial.number, activation=setup.activation)
    member = LockstepMember(sae=sae, config=cfg, callbacks=[PruningCallback(trial, loaded)],
                            training_run_id=f"{space.study.name}-trial-{trial.number:04d}",
                            save_dir=trial_dir, extra_meta=extra)
    return _Prepared(trial=trial, setup=setup, member=member, trial_dir=trial_dir, start=start)


def _finish(p: _Prepared, result: MemberOutcome, loaded: LoadedSpace) -> TrialOutcome:
    trial, setup, trial_dir, start = p.trial, p.setup, p.trial_dir, p.start
    if isinstance(result.error, TrainingDiverged):
        trial.set_user_attr("diverged_step", result.error.step)
        return _fail(trial, trial_dir, f"diverged: {result.error}", start, setup)
    if result.error is not None:  # one broken trial must not end the sweep
        e = result.error
        detail = traceback.format_exception_only(type(e), e)[-1].strip()
        return _fail(trial, trial_dir, f"error: {detail}", start, setup)
    history = result.history
    assert history is not None and history.final is not None  # always evaluated at least once
    final = history.final
    cfg = p.member.config
    metrics = {
        "final_r2": final.r2, "best_r2": max(history.r2), "final_fvu": final.fvu,
        "best_fvu": min(history.fvu), "final_mse": final.mse, "final_l0": final.l0,
        "final_dead_ratio": final.dead_ratio, "dead_features": final.dead_features,
        "tokens_seen": final.tokens, "steps": final.step, "epochs_run": final.epoch + 1,
        "wall_time_s": time.perf_counter() - start, "train_time_s": history.wall_time_s,
        "dead_window_tokens": history.dead_window_tokens,
        "n_train_tokens": history.n_train_tokens, "n_eval_tokens": history.n_eval_tokens,
        "planned_tokens": cfg.planned_tokens(history.n_train_tokens),
    }
    data = loaded.space.data
    if has_ground_truth(data.store, data.run_id):  # synthetic data: how many features it found
        rec = feature_recovery(load_ground_truth(data.store, data.run_id),
                               p.member.sae.W_dec.detach().cpu())
        metrics.update(recovery=rec.recovery, mmcs=rec.mmcs)
    for key, value in metrics.items():
        trial.set_user_attr(key, value)
    if history.stop_reason is not None:
        _write_trial_json(trial, trial_dir, "PRUNED", None, setup, metrics)
        return TrialOutcome(TrialState.PRUNED, None, f"pruned: {history.stop_reason}")
    objectives = loaded.space.objectives
    values = [float(_metric(final, setup, o.metric)) for o in objectives]
    _write_trial_json(trial, trial_dir, "COMPLETE", values, setup, metrics)
    shown = " ".join(f"{o.metric}={v:.4g}" for o, v in zip(objectives, values, strict=True))
    return TrialOutcome(TrialState.COMPLETE, values, shown)


def _metric(final: EvalResult, setup: TrialSetup, name: str) -> float:
    if name == "n_latents":
        return setup.n_latents
    if name == "k":
        return setup.k
    return getattr(final, name)


def _fail(trial: optuna.Trial, trial_dir: Path, reason: str, start: float,
          setup: TrialSetup | None = None, fatal: bool = False) -> TrialOutcome:
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("wall_time_s", time.perf_counter() - start)
    _write_trial_json(trial, trial_dir, "FAIL", None, setup, {"fail_reason": reason})
    return TrialOutcome(TrialState.FAIL, None, reason, fatal=fatal)


def _write_trial_json(trial: optuna.Trial, trial_dir: Path, state: str,
                      values: list[float] | None, setup: TrialSetup | None,
                      metrics: dict[str, Any]) -> None:
    write_json(trial_dir / "trial.json", {
        "number": trial.number, "state": state, "values": values, "params": trial.params,
        "resolved": None if setup is None else {
            "n_latents": setup.n_latents, "k": setup.k, "lr": setup.lr,
            "expansion": setup.expansion, "activation": setup.activation},
        "metrics": metrics,
    })
