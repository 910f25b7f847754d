"""One sweep trial: sample, train through the shared trainer, prune, record, save.

Every way a trial can end is recorded in its TrialRecord (harness.sweep.trial_record): COMPLETE
with its objective values, PRUNED with the rule (harness.sweep.pruning), or FAIL with the
reason. An exception anywhere in a trial fails that trial, never the worker.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from harness.core.metrics import EVAL_METRICS, feature_recovery, firing_f1
from harness.core.sae import SparseAutoencoder
from harness.core.seeding import stream_seed
from harness.core.store import StoreError
from harness.core.training import LockstepMember, SaeTrainer
from harness.core.training.results import MemberOutcome, SaveFailed, TrainingDiverged
from harness.data.synthetic import has_ground_truth, load_ground_truth, load_synthetic
from harness.sweep.artifacts import upload_trial
from harness.sweep.downstream import final_evaluator, probe_for
from harness.sweep.latent_tasks import latent_evaluators
from harness.sweep.optuna_private import trial_id
from harness.sweep.pruning import PruningCallback, rules_for
from harness.sweep.space import LoadedSpace, TrialSetup
from harness.sweep.trial_record import TrialRecord

log = logging.getLogger("saesweep.trial")


@dataclass(frozen=True)
class WorkerContext:
    """Where and how this worker runs its trials."""

    device: str
    """The device as this process addresses it (a GPU worker sees only its GPU, as cuda:0)."""
    device_label: str
    """The same device as the machine names it (cuda:3): what trials record."""
    worker_index: int
    wandb_mode: str
    results_dir: Path
    """results/<study>/"""
    artifacts: str | None = None
    """Artifact store location every trial's files are uploaded to; None = none."""
    memory_budget: int | None = None
    """Host memory of each trial (bytes) unless its space sets training.memory_budget."""


@dataclass(frozen=True)
class TrialOutcome:
    """What to tell the study."""

    state: TrialState
    values: list[float] | None
    summary: str
    fatal: bool = False
    """The worker must stop after telling this (bad data would fail every trial)."""
    unwritable: str | None = None
    """Where an output could not be written: the worker stops after telling this (every trial
    after it would fail the same way), and re-enqueues it when `requeue`."""
    requeue: bool = False
    """Run this trial's parameters again (it trained, but its SAE could not be saved)."""


@dataclass
class _Prepared:
    """A trial ready to train: its record, setup and the trainer member built from them."""

    trial: optuna.Trial
    record: TrialRecord
    setup: TrialSetup
    member: LockstepMember
    pruning: PruningCallback
    start: float


def run_trials(trials: list[optuna.Trial], loaded: LoadedSpace, ctx: WorkerContext,
               stop: Callable[[], str | None] | None = None) -> list[TrialOutcome]:
    """Train several configurations in lockstep on the same batches (one when len == 1).

    Each trial is still sampled, pruned, failed, recorded and saved on its own. `stop` (the
    worker's signal handling) is polled after every batch: when it gives a reason, the trials
    write their checkpoints and TrainingInterrupted propagates to the worker.
    """
    space = loaded.space
    outcomes: dict[int, TrialOutcome] = {}
    prepared: list[_Prepared] = []
    for trial in trials:
        record = TrialRecord(number=trial.number, device=ctx.device_label,
                             host=socket.gethostname(), worker=ctx.worker_index,
                             trial_dir=str(ctx.results_dir / "trials" / f"{trial.number:04d}"))
        start = time.perf_counter()
        try:
            item = _prepare(trial, record, loaded, ctx, start)
        except Exception as e:  # noqa: BLE001 - a broken trial must not end the worker
            outcomes[trial.number] = _fail(trial, record, f"error: {_describe(e)}", start)
            continue
        if isinstance(item, TrialOutcome):
            outcomes[trial.number] = item
        else:
            prepared.append(item)
    if prepared:
        try:
            results = SaeTrainer.train_lockstep(
                space.data.store, space.data.run_id, space.data.layer_signature,
                [p.member for p in prepared], stop=stop,
                target_layer_signature=space.data.target_layer_signature)
        except StoreError as e:  # bad data fails every trial: record it, then stop the worker
            for p in prepared:
                outcomes[p.trial.number] = _fail(p.trial, p.record, f"bad data: {e}", p.start,
                                                 fatal=True)
        except Exception as e:  # noqa: BLE001 - anything else fails these trials, not the worker
            log.exception("trials %s failed", [p.trial.number for p in prepared])
            for p in prepared:
                outcomes[p.trial.number] = _fail(p.trial, p.record, f"error: {_describe(e)}",
                                                 p.start)
        else:
            for p, result in zip(prepared, results, strict=True):
                try:
                    outcomes[p.trial.number] = _finish(p, result, loaded)
                except Exception as e:  # noqa: BLE001
                    log.exception("trial %d could not be recorded", p.trial.number)
                    outcomes[p.trial.number] = _fail(p.trial, p.record,
                                                     f"error: {_describe(e)}", p.start)
    return [outcomes[t.number] for t in trials]


def _prepare(trial: optuna.Trial, record: TrialRecord, loaded: LoadedSpace, ctx: WorkerContext,
             start: float) -> _Prepared | TrialOutcome:
    space = loaded.space
    _save(trial, record, write_file=False)  # resets what a retry inherited from its predecessor
    try:
        setup = loaded.setup(trial)
    except ValueError as e:
        return _fail(trial, record, f"invalid configuration: {e}", start)
    record.params = dict(trial.params)
    record.expansion, record.n_latents, record.k = setup.expansion, setup.n_latents, setup.k
    record.lr, record.activation = setup.lr, setup.activation
    record.rung = setup.rung
    _save(trial, record, write_file=False)
    name = f"{space.study.name}-trial-{trial.number:04d}"
    cfg = setup.config.replace(
        device=ctx.device, progress=False, use_wandb=ctx.wandb_mode != "off",
        memory_budget=setup.config.memory_budget or ctx.memory_budget,
        checkpoint_every=space.faults.checkpoint_every,
        wandb_mode=None if ctx.wandb_mode == "off" else ctx.wandb_mode,
        wandb_project=space.wandb.project, wandb_group=space.study.name, wandb_job_type="trial",
        wandb_run_name=name, wandb_dir=str(ctx.results_dir))
    extra = {"study": space.study.name, "trial_number": trial.number,
             "params": setup.sampled, "n_latents": setup.n_latents, "k": setup.k,
             "expansion": setup.expansion, "lr": setup.lr, "activation": setup.activation,
             "device": ctx.device_label, "host": record.host}
    seed_trial = trial.number if setup.seed_trial is None else setup.seed_trial
    transcoder = space.data.target_layer_signature is not None
    sae = SparseAutoencoder(setup.n_latents, loaded.d, setup.k, device=ctx.device,
                            seed=stream_seed(cfg.seed, "trial", seed_trial),
                            activation=setup.activation,
                            activation_options=setup.activation_options,
                            n_outputs=loaded.d_out or None, skip=setup.skip,
                            transcoder=transcoder)
    record.kind = sae.kind
    extra["kind"] = sae.kind
    # keyed by the first trial of a retry chain: a retry resumes where its predecessor stopped
    first = trial.storage.get_trial_system_attrs(trial_id(trial)).get("failed_trial",
                                                                       trial.number)
    downstream = final_evaluator(loaded, ctx.device, ctx.results_dir)
    probe = probe_for(loaded, downstream, sae)
    pruning = PruningCallback(rules_for(trial, space.pruner, space.objectives,
                                        probe.value if probe else None),
                              setup.planned_steps, space.pruner.min_remaining)
    callbacks = [probe, pruning] if probe else [pruning]  # the probe measures, then rules read
    member = LockstepMember(sae=sae, config=cfg, callbacks=callbacks, training_run_id=name,
                            save_dir=record.trial_dir, extra_meta=extra,
                            checkpoint_path=checkpoint_dir(ctx, space.study.name)
                            / f"{first:04d}.pt",
                            final_evaluators=[*([downstream] if downstream else []),
                                              *latent_evaluators(loaded, ctx.device)])
    record.artifact_store = ctx.artifacts
    return _Prepared(trial=trial, record=record, setup=setup, member=member, pruning=pruning,
                     start=start)


TRUTH_TOKENS = 8192
"""Fresh tokens of a synthetic store's process the firing F1 is measured on."""


def truth_firing_f1(sae: SparseAutoencoder, data: Any) -> float | None:
    """firing_f1 of `sae` on TRUTH_TOKENS fresh tokens of the synthetic process its store was
    generated by (never trained on), or None where the store does not record it."""
    sample = _truth_sample(str(data.store), data.run_id)
    if sample is None:
        return None
    x, planted = sample
    device = sae.W_dec.device
    with torch.no_grad():
        fired = sae.encode_dense(x.to(device, sae.W_dec.dtype)) > 0
    return firing_f1(planted, fired.cpu())


@functools.lru_cache(maxsize=2)
def _truth_sample(store: str, run_id: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fresh tokens and their planted activity, drawn once per worker (they are the same
    for every trial of a store)."""
    process = load_synthetic(store, run_id)
    if process is None:
        return None
    x, planted, _ = process.sample(TRUTH_TOKENS)
    return x, planted


def checkpoint_dir(ctx: WorkerContext, study: str) -> Path:
    """Where a study's checkpoints live: beside the artifacts when those are a folder (shared by
    every node, so a retry resumes wherever it runs), else in the results folder."""
    if ctx.artifacts and not ctx.artifacts.startswith("s3://"):
        return Path(ctx.artifacts) / "checkpoints" / study
    return ctx.results_dir / "checkpoints"


def _finish(p: _Prepared, result: MemberOutcome, loaded: LoadedSpace) -> TrialOutcome:
    trial, record = p.trial, p.record
    if isinstance(result.error, TrainingDiverged):
        record.diverged_step = result.error.step
        return _fail(trial, record, f"diverged: {result.error}", p.start)
    history = result.history
    if history is None or history.final is None:  # one broken trial must not end the sweep
        e = result.error
        return _fail(trial, record, f"error: {_describe(e) if e else 'no evaluation'}", p.start)
    final = history.final
    record.resumed_from_step = history.resumed_from_step
    record.metrics = {
        **{f"final_{name}": getattr(final, name) for name in EVAL_METRICS},
        "best_r2": max(history.r2), "best_fvu": min(history.fvu),
        "dead_features": final.dead_features, "tokens_seen": final.tokens,
        "steps": final.step, "epochs_run": final.epoch + 1,
        "wall_time_s": time.perf_counter() - p.start, "train_time_s": history.wall_time_s,
        "finish_s": history.finish_s, "finish_share": history.finish_share,
        "dead_window_tokens": history.dead_window_tokens,
        "n_train_tokens": history.n_train_tokens, "n_eval_tokens": history.n_eval_tokens,
        "planned_tokens": p.member.config.planned_tokens(history.n_train_tokens),
        **history.final_metrics,
    }
    data = loaded.space.data
    if has_ground_truth(data.store, data.run_id):  # synthetic data: how many features it found
        truth = load_ground_truth(data.store, data.run_id,
                                  target=data.target_layer_signature is not None)
        rec = feature_recovery(truth, p.member.sae.W_dec.detach().cpu())
        record.metrics.update(recovery=rec.recovery, mmcs=rec.mmcs,
                              firing_f1=truth_firing_f1(p.member.sae, data))
    if isinstance(result.error, SaveFailed):
        record.saved_to = str(result.error.fallback) if result.error.fallback else None
        failed = _fail(trial, record, f"save failed: {result.error}", p.start)
        return dataclasses.replace(failed, unwritable=str(result.error.target), requeue=True)
    if result.error is not None:
        return _fail(trial, record, f"error: {_describe(result.error)}", p.start)
    if p.pruning.event is not None:
        event = p.pruning.event
        record.state = "PRUNED"
        record.prune_rule, record.prune_reason = event.rule, event.reason
        record.prune_step, record.prune_tokens = event.step, event.tokens
        record.prune_values = event.values
        lost = _upload(trial, record, p.member.save_dir)
        _save(trial, record)
        return TrialOutcome(TrialState.PRUNED, None, f"pruned: {event.reason}", unwritable=lost)
    objectives = loaded.space.objectives
    values = [record.objective_value(o.metric) for o in objectives]
    bad = [o.metric for o, v in zip(objectives, values, strict=True) if not math.isfinite(v)]
    if bad:
        return _fail(trial, record, f"non-finite objective value(s) {bad}: "
                     f"{dict(zip([o.metric for o in objectives], values, strict=True))}", p.start)
    record.state, record.values = "COMPLETE", values
    lost = _upload(trial, record, p.member.save_dir)
    _save(trial, record)
    shown = " ".join(f"{o.metric}={v:.4g}" for o, v in zip(objectives, values, strict=True))
    return TrialOutcome(TrialState.COMPLETE, values, shown, unwritable=lost)


def _upload(trial: optuna.Trial, record: TrialRecord, folder: Any) -> str | None:
    """A finished trial's saved files, also to the artifact store (so every node can reach
    them); the store's location when the upload failed, else None."""
    if record.artifact_store is not None and folder is not None:
        record.artifacts = upload_trial(trial, Path(folder), record.artifact_store) or None
        if record.artifacts is None:
            return f"the artifact store {record.artifact_store}"
    return None


def _fail(trial: optuna.Trial, record: TrialRecord, reason: str, start: float,
          fatal: bool = False) -> TrialOutcome:
    record.state, record.fail_reason = "FAIL", reason
    record.metrics.setdefault("wall_time_s", time.perf_counter() - start)
    _save(trial, record)
    return TrialOutcome(TrialState.FAIL, None, reason, fatal=fatal)


def _save(trial: optuna.Trial, record: TrialRecord, write_file: bool = True) -> None:
    """The record into the study, and into trial.json when the folder can be written (a failed
    trial's folder is marked by its state there). A trial reaped while it ran (its worker looked
    dead) is already FAIL and re-enqueued: its result is dropped, the retry runs it again."""
    try:
        problem = record.save(trial, write_file=write_file)
    except UpdateFinishedTrialError:
        log.warning("trial %d was reaped while it ran; its result is dropped (a retry re-runs "
                    "it)", record.number)
        return
    if problem is not None:
        log.warning("trial %d: trial.json not written: %s", record.number, problem)


def _describe(e: BaseException) -> str:
    return traceback.format_exception_only(type(e), e)[-1].strip()
