"""One SAE's training state inside the shared loop: its optimiser, schedule, dead-feature
tracker and loss monitor; one step, one evaluation, and how the run ends (saved, or failed)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from harness.core.activations import check_penalty
from harness.core.loader import ActivationLoader
from harness.core.metrics import DeadFeatureTracker, DeadLatents, ReconstructionAccumulator
from harness.core.store import ActivationSource, LocalStore
from harness.core.store.statistics import participation_ratio
from harness.core.training.checkpoint import read_checkpoint, write_checkpoint
from harness.core.training.loss_monitor import LossMonitor
from harness.core.training.optim import adam, schedule
from harness.core.training.outputs import new_run_id, save_run, target_layer
from harness.core.training.results import (
    EvalResult,
    MemberOutcome,
    SaveFailed,
    StopTraining,
    TrainingHistory,
)
from harness.core.training.wandb_callback import WandbCallback
from harness.core.training.weight_average import WeightAverage

if TYPE_CHECKING:
    from harness.core.training.trainer import LockstepMember

DEFAULT_DEAD_WINDOW = 10_000_000  # sparsify / dictionary_learning: dead after 10M tokens


class Centers(NamedTuple):
    """Where a run's biases start, from a sample of the training tokens."""

    output: torch.Tensor
    """b_dec: the centre of what it reconstructs."""
    input: torch.Tensor | None = None
    """A transcoder's input centre: b_enc starts at -W_enc of it (the centring an SAE gets
    from b_dec)."""


class MemberRun:
    """One lockstep member while it trains."""

    def __init__(self, member: LockstepMember, store: LocalStore, source: ActivationSource,
                 loader: ActivationLoader, centers: Centers | None,
                 scale: float, device: torch.device, total_steps: int) -> None:
        self.member, self.sae = member, member.sae
        self.cfg = member.config.resolved_for(device, member.sae.n_latents,
                                              member.sae.n_inputs, total_steps,
                                              participation_ratio(source))
        self.store, self.source, self.loader = store, source, loader
        cfg, sae = self.cfg, self.sae
        sae.to(device)
        sae.sparse_backward = cfg.sparse_backward
        self.device = device
        self.training_run_id = member.training_run_id or new_run_id(
            source.run_id, source.layer_signature)
        self.out_dir = (Path(member.save_dir) if member.save_dir is not None
                        else store.run_dir(self.training_run_id))
        window = cfg.dead_window_tokens or min(DEFAULT_DEAD_WINDOW, loader.n_train_tokens)
        self.history = TrainingHistory(dead_window_tokens=window,
                                       n_train_tokens=loader.n_train_tokens,
                                       n_eval_tokens=int(loader.eval_tokens().shape[0]),
                                       kind=sae.kind,
                                       target_layer_signature=target_layer(source))
        self.dead = DeadFeatureTracker(sae.n_latents, window, device)
        if centers is not None:
            with torch.no_grad():
                sae.b_dec.copy_(centers.output.to(sae.b_dec))
                if centers.input is not None:
                    sae.b_enc.copy_(-(sae.enc_weight @ centers.input.to(sae.enc_weight)))
        check_penalty(sae.activation, cfg.l0_lambda)
        self.scale = scale
        """The data's per-element standard deviation (the sparsity penalties' unit)."""
        sae.activation_fn.begin_training(sae, scale)
        self.opt = adam(sae, cfg)
        self.sched = schedule(self.opt, cfg, total_steps)
        self.total_steps = total_steps
        self.refits = (cfg.decoder_refit and sae.n_latents <= cfg.decoder_refit_max_latents
                       and sae.activation_fn.supports_decoder_refit)
        """Whether this run refits its decoder once training ends."""
        self.encoder_refits = (self.refits and cfg.encoder_refit and not sae.transcoder
                               and sae.activation_fn.supports_encoder_refit)
        """Whether its encoder gets a least-squares step after the decoder refit."""
        self.average = WeightAverage.for_run(sae, cfg.weight_average_fraction, total_steps)
        """The moving average of the weights the run ends with, or None."""
        self.step_count = 0
        self.epoch = 0
        self.losses = LossMonitor(cfg.divergence_factor, device)
        self.dead_now: DeadLatents | None = None
        """The dead latents as last read (AuxK's), refreshed every `host_sync_every` steps."""
        self.error: Exception | None = None
        self.postfix = ""
        self.checkpoint_path = (Path(member.checkpoint_path) if member.checkpoint_path
                                is not None else None)
        self.position = (0, 0)
        """(epoch, index of the next batch) this run trains from."""
        self.start = time.perf_counter()
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            read_checkpoint(self, self.checkpoint_path)
        self.wandb = None
        if cfg.use_wandb:
            self.wandb = WandbCallback(cfg, self.training_run_id, self.out_dir, {
                **cfg.to_dict(), **sae.config_dict(), "activation_run": source.run_id,
                "layer_signature": source.layer_signature, "kind": sae.kind,
                "target_layer_signature": self.history.target_layer_signature,
                "dead_window_tokens": window,
                "n_train_tokens": loader.n_train_tokens, **(member.extra_meta or {})})
        # W&B first: it logs an evaluation before a pruning callback may end the run
        self.callbacks = [*([self.wandb] if self.wandb else []), *member.callbacks]

    def guarded(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run a step or an evaluation; False once this run has stopped (pruned or failed)."""
        try:
            fn(*args)
            return True
        except StopTraining as stop:
            self.history.stop_reason = stop.reason
        except Exception as e:  # noqa: BLE001 - divergence or a bug ends this run, not the pack
            self.error = e
        return False

    def step(self, batch: torch.Tensor, epoch: int, index: int = 0) -> None:
        sae, cfg = self.sae, self.cfg
        x, target = sae.split_batch(batch)
        self.epoch = epoch
        read = self.step_count % cfg.host_sync_every == 0  # the only host reads of a step
        if cfg.auxk_alpha and (read or self.dead_now is None):
            self.dead_now = self.dead.read()
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=cfg.autocast_bf16):
            out = sae(x)
            mse = (out.reconstruction.float() - target).pow(2).mean()
            loss = sae.activation_fn.reconstruction_loss(sae, target, out, mse)
            if cfg.l1_lambda or cfg.l0_lambda:
                warm = self.sparsity_weight()
                if cfg.l1_lambda:
                    loss = loss + warm * cfg.l1_lambda * self.scale * sae.l1_penalty(out)
                if cfg.l0_lambda:
                    loss = loss + (warm * cfg.l0_lambda * self.scale ** 2
                                   * sae.activation_fn.l0_penalty(sae, out))
            if cfg.auxk_alpha:
                loss = loss + cfg.auxk_alpha * sae.auxk_loss(target, out, self.dead_now)
        self.losses.record(loss, self.step_count)
        if read:  # on CPU every step: a diverged step never updates the weights
            self.losses.check()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grads_()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        sae.normalize_decoder_()
        self.dead.update(out.top_indices, out.top_values)
        self.step_count += 1
        if self.average is not None:
            self.average.update(sae)
            if self.step_count >= self.total_steps:  # the last step: end with the average
                self.average.apply_(sae)
        refit_next = self.refits and self.step_count >= self.total_steps
        if cfg.eval_every and self.step_count % cfg.eval_every == 0 and not refit_next:
            self.evaluate()  # (the last step's evaluation comes after the refit)
        if (self.checkpoint_path is not None and cfg.checkpoint_every
                and self.step_count % cfg.checkpoint_every == 0):
            self.losses.check()  # never checkpoint a diverged run
            self.checkpoint(epoch, index + 1)

    def sparsity_weight(self) -> float:
        """The sparsity penalties' warm-up factor at this step: linear from 0 to 1."""
        warmup = self.cfg.sparsity_warmup_fraction * self.total_steps
        return min(1.0, (self.step_count + 1) / warmup) if warmup >= 1 else 1.0

    def checkpoint(self, epoch: int, next_index: int) -> int:
        """Write a checkpoint to go on from batch `next_index` of `epoch`; the step it holds."""
        return write_checkpoint(self, epoch, next_index)

    def end_of_epoch(self, epoch: int, last: bool) -> None:
        evaluated = bool(self.history.step) and self.history.step[-1] == self.step_count
        if (not self.cfg.eval_every or last) and not evaluated:
            self.evaluate()
        if last:
            self.evaluate_final()

    @torch.no_grad()
    def evaluate_final(self) -> None:
        """The member's final evaluators on the finished SAE, each timed."""
        for evaluator in self.member.final_evaluators:
            start = time.perf_counter()
            values = dict(evaluator(self.sae))
            name = getattr(evaluator, "__name__", type(evaluator).__name__)
            values[f"{name}_s"] = time.perf_counter() - start
            self.history.final_metrics.update(values)
        if self.wandb is not None:
            self.wandb.final(self.history.final_metrics, self.step_count)

    @torch.no_grad()
    def evaluate(self) -> None:
        self.losses.check()  # a diverged run is never evaluated
        sae = self.sae
        acc = ReconstructionAccumulator()
        for batch in self.loader.eval_batches(self.cfg.batch_size):
            x, target = sae.split_batch(batch)
            out = sae(x)
            acc.update(target, out.reconstruction, (out.top_values > 0).sum())
        m = acc.result()
        n_dead = self.dead.count()
        result = EvalResult(
            step=self.step_count, epoch=self.epoch, tokens=self.dead.tokens,
            loss=self.losses.take_mean(), r2=m.r2, fvu=m.fvu, mse=m.mse, l0=m.l0,
            dead_features=n_dead, dead_ratio=n_dead / sae.n_latents,
            lr=self.opt.param_groups[0]["lr"], elapsed_s=time.perf_counter() - self.start)
        self.history.append(result)
        self.postfix = f"r2={m.r2:.4f} l0={m.l0:.1f} dead={n_dead}"
        for callback in self.callbacks:
            callback(result)  # may raise StopTraining

    def close_wandb(self, error: BaseException | None) -> None:
        if self.wandb is not None:
            self.wandb.close(self.history, error)

    def finish(self) -> MemberOutcome:
        """Close W&B and save (nothing is saved for a run that failed); the run is over, so its
        checkpoint goes."""
        self.close_wandb(self.error)
        if self.checkpoint_path is not None:
            self.checkpoint_path.unlink(missing_ok=True)
        if self.error is not None:
            return MemberOutcome(history=None, error=self.error)
        self.history.wall_time_s = time.perf_counter() - self.start
        if not self.member.save:
            return MemberOutcome(history=self.history)
        try:
            self._save(self.out_dir)
        except OSError as e:  # keep the trained weights somewhere and say where
            fallback: Path | None = Path(
                tempfile.mkdtemp(prefix=f"saesweep-unsaved-{self.training_run_id}-"))
            try:
                self._save(fallback)  # type: ignore[arg-type]
            except OSError:
                fallback = None
            return MemberOutcome(history=self.history, error=SaveFailed(self.out_dir, fallback, e))
        return MemberOutcome(history=self.history)

    def _save(self, folder: Path) -> None:
        self.history.run_dir = str(folder)
        save_run(folder, self.sae, self.cfg, self.history, self.source, self.store,
                 self.training_run_id, self.member.extra_meta or {})
