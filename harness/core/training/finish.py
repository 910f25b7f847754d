"""The least-squares finish after the last step, at a bounded cost: the decoder refit
(harness.core.training.refit) on a sample of the tokens trained on, sized by `finish_budget`; then,
where asked for and the activation allows it, one encoder step (harness.core.training.encoder_refit)
and the decoder refit again. Lockstep runs share each pass over the tokens.

The budget is counted in training steps of the run, with a cost model measured on CPU
(scripts/bench_finish.py, docs/training.md): a pass over one batch costs DECODER_PASS_STEPS steps
(the dense encoder product, as in a step, plus the sums), the encoder refit ENCODER_PASS_STEPS
more per batch, and the solve of the [n+1, n+1] system its float64 flops over a step's."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from harness.core.loader import ActivationLoader
from harness.core.training.encoder_refit import ITERATIONS, EncoderRefit, solve_encoder_refits
from harness.core.training.refit import DecoderRefit
from harness.core.training.results import TrainingInterrupted, short_error

if TYPE_CHECKING:
    from harness.core.training.config import SaeTrainingConfig
    from harness.core.training.run import MemberRun

DECODER_PASS_STEPS = 1.2
"""A decoder-refit pass over one batch, in training steps of that batch (the measurement:
docs/training.md)."""
ENCODER_PASS_STEPS = 2.0 + 0.55 * ITERATIONS + DECODER_PASS_STEPS
"""The encoder refit's passes over one batch (targets, each CG product, the decoder again)."""


def solve_steps(n_latents: int, d: int, batch_size: int, bf16: bool) -> float:
    """The decoder solve in training steps: a Cholesky factor and a solve for d columns
    (n^3/3 + 2 n^2 d multiply-adds) over a step's dense product (B n d), at the measured cost of
    a float32 solve's multiply-add in float32 and in bf16 steps (docs/training.md)."""
    return (n_latents**2 / 3 + 2 * n_latents * d) / (batch_size * d) * (0.85 if bf16 else 0.5)


def finish_batches(cfg: SaeTrainingConfig, n_latents: int, d: int, planned_steps: int,
                   trained_batches: int, encoder: bool) -> int:
    """Batches the finish reads: `finish_tokens`, or what `finish_budget` of `planned_steps`
    pays for once the solves are paid; at most the batches trained on; 0 = no finish."""
    if cfg.finish_tokens is not None:
        return min(trained_batches, math.ceil(cfg.finish_tokens / cfg.batch_size))
    solves = (solve_steps(n_latents, d, cfg.batch_size, bool(cfg.autocast_bf16))
              * (2 if encoder else 1))
    per_batch = DECODER_PASS_STEPS + (ENCODER_PASS_STEPS if encoder else 0.0)
    spare = cfg.finish_budget * planned_steps - solves
    return max(0, min(trained_batches, math.floor(spare / per_batch)))


PASS_TIME_SHARE = 0.8
"""The step-count cost model prices a pass at TopK's k = 32; wider codes (k >= 64, ReLU and
JumpReLU, whose width training decides) cost more per token. So a budget-sized finish also stops
reading once its passes took this share of `finish_budget` x the loop's seconds (the rest is for
the solve); `finish_tokens` is never cut."""

STASH_BYTES = 128 << 20
"""The finish's batches are kept from the first epoch (in the store's dtype) when they take at
most this much: a streamed store would otherwise fill its shuffle buffer again for them."""


def finish_limits(loader: ActivationLoader, runs: list[MemberRun], total: int) -> dict[int, int]:
    """id(run) -> the batches of epoch 0 its finish reads (0: none)."""
    trained_batches = min(total, loader.batches_per_epoch)
    return {id(run): finish_batches(run.cfg, run.sae.n_latents, run.sae.n_inputs, total,
                                    trained_batches, run.encoder_refits) if run.refits else 0
            for run in runs}


def stash_size(loader: ActivationLoader, runs: list[MemberRun], total: int) -> int:
    """How many of epoch 0's first batches the loop keeps for the finish (0: it re-reads)."""
    batches = max(finish_limits(loader, runs, total).values(), default=0)
    itemsize = torch.empty(0, dtype=loader.source.dtype).element_size()
    size = batches * loader.config.batch_size * loader.source.d * itemsize if runs else 0
    plan = loader.memory_plan
    return batches if size <= (plan.stash_bytes if plan is not None else STASH_BYTES) else 0


def refit(loader: ActivationLoader, runs: list[MemberRun], total: int,
          stop: Callable[[], str | None] | None,
          stash: list[torch.Tensor] | None = None, loop_s: float = 0.0) -> None:
    """The finish of `runs` after `total` steps: each reads the first batches of epoch 0 that its
    budget pays for (from `stash`, the loop's copies of them, when it holds them all). An
    interrupt checkpoints each run's trained state: the finish is redone on resume. `loop_s`,
    the training loop's seconds, also bounds a budget-sized finish's passes (PASS_TIME_SHARE)."""
    limits = finish_limits(loader, runs, total)
    runs = [run for run in runs if limits[id(run)] > 0]
    if not runs:
        return
    trained = {id(run): {k: v.clone() for k, v in run.sae.state_dict().items()}
               for run in runs if run.encoder_refits}

    kept = stash if stash and len(stash) >= max(limits[id(run)] for run in runs) else None

    def batches(limit: int) -> Iterator[torch.Tensor]:
        for index, x in enumerate(kept if kept is not None else loader.train_batches(0)):
            yield x.to(loader.dtype)  # kept in the store's dtype
            reason = stop() if stop is not None else None
            if reason:
                for run in runs:
                    if id(run) in trained:
                        run.sae.load_state_dict(trained[id(run)])
                raise TrainingInterrupted(reason, {
                    str(run.checkpoint_path): run.checkpoint(run.epoch, loader.batches_per_epoch)
                    for run in runs if run.checkpoint_path is not None})
            if index + 1 >= limit:
                break

    _refit_decoders(runs, limits, batches, loop_s)
    runs = [run for run in runs if run.encoder_refits and run.history.decoder_refit_tokens]
    if not runs:
        return
    batch_size = loader.config.batch_size
    cap = min(max(limits[id(run)] for run in runs),
              math.ceil(runs[0].cfg.encoder_refit_max_tokens / batch_size))
    refits = [EncoderRefit(run.sae) for run in runs]
    try:
        solve_encoder_refits(refits, lambda: batches(cap))
    except (FloatingPointError, RuntimeError) as e:  # e.g. out of memory: keep the decoder refit
        warnings.warn(f"encoder refit skipped ({short_error(e)})", RuntimeWarning, stacklevel=2)
        return
    for run, encoder in zip(runs, refits, strict=True):
        try:
            run.history.encoder_refit_tokens = encoder.apply_()
        except FloatingPointError as e:
            warnings.warn(f"{run.training_run_id}: encoder refit skipped ({short_error(e)}); "
                          "the encoder stays as trained", RuntimeWarning, stacklevel=2)
    _refit_decoders([run for run in runs if run.history.encoder_refit_tokens], limits, batches)


def _refit_decoders(runs: list[MemberRun], limits: dict[int, int],
                    batches: Callable[[int], Iterator[torch.Tensor]], loop_s: float = 0.0) -> None:
    """One pass that refits each run's decoder on its first `limits[id(run)]` batches (fewer
    once a budget-sized finish's passes have taken their share of the loop's time)."""
    if not runs:
        return
    refits = [DecoderRefit(run.sae.n_latents, run.sae.n_outputs, run.device,
                           run.sae.n_inputs if run.sae.skip else 0) for run in runs]
    limits = dict(limits)
    spent = {id(run): 0.0 for run in runs}
    for index, x in enumerate(batches(max(limits[id(run)] for run in runs))):
        for run, decoder in zip(runs, refits, strict=True):
            if index < limits[id(run)]:
                start = time.perf_counter()
                # the latents chosen by the step's product (bf16 where it trains in bf16)
                decoder.observe(run.sae, x, bf16=bool(run.cfg.autocast_bf16))
                spent[id(run)] += time.perf_counter() - start
                if (run.cfg.finish_tokens is None and loop_s > 0 and spent[id(run)]
                        >= PASS_TIME_SHARE * run.cfg.finish_budget * loop_s):
                    limits[id(run)] = index + 1  # its budget is spent: no more batches
    for run, decoder in zip(runs, refits, strict=True):
        try:
            run.history.decoder_refit_tokens = decoder.apply_(run.sae,
                                                              run.cfg.decoder_prior_tokens)
        except (FloatingPointError, RuntimeError) as e:  # e.g. out of memory: keep Adam's
            warnings.warn(f"{run.training_run_id}: decoder refit skipped ({short_error(e)}); the "
                          "decoder stays as trained", RuntimeWarning, stacklevel=2)
