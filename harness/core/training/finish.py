"""The least-squares finish after the last step: the decoder refit (harness.core.refit), then,
where the activation allows it, one encoder step (harness.core.encoder_refit) and the decoder
refit again. Lockstep runs share each pass over the tokens."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import torch

from harness.core.encoder_refit import EncoderRefit, solve_encoder_refits
from harness.core.loader import ActivationLoader
from harness.core.refit import DecoderRefit
from harness.core.training.results import TrainingInterrupted, short_error

if TYPE_CHECKING:
    from harness.core.training.run import MemberRun


def refit(loader: ActivationLoader, runs: list[MemberRun], total: int,
          stop: Callable[[], str | None] | None) -> None:
    """The finish over the tokens trained on (the first `total` batches of epoch 0: the
    budget's tokens, or every training token once). An interrupt checkpoints each run's trained
    state: the finish is redone on resume."""
    if not runs:
        return
    trained = {id(run): {k: v.clone() for k, v in run.sae.state_dict().items()}
               for run in runs if run.encoder_refits}

    def batches(limit: int) -> Iterator[torch.Tensor]:
        for index, x in enumerate(loader.train_batches(0)):
            yield x
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

    steps = min(total, loader.batches_per_epoch)
    _refit_decoders(runs, batches(steps))
    runs = [run for run in runs if run.encoder_refits and run.history.decoder_refit_tokens]
    if not runs:
        return
    cap = min(steps, math.ceil(runs[0].cfg.encoder_refit_max_tokens / loader.config.batch_size))
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
    _refit_decoders([run for run in runs if run.history.encoder_refit_tokens], batches(steps))


def _refit_decoders(runs: list[MemberRun], batches: Iterable[torch.Tensor]) -> None:
    """One pass over `batches` that refits each run's decoder."""
    refits = [DecoderRefit(run.sae.n_latents, run.sae.n_inputs, run.device) for run in runs]
    for x in batches:
        for run, decoder in zip(runs, refits, strict=True):
            decoder.observe(run.sae, x)
    for run, decoder in zip(runs, refits, strict=True):
        try:
            run.history.decoder_refit_tokens = decoder.apply_(run.sae)
        except (FloatingPointError, RuntimeError) as e:  # e.g. out of memory: keep Adam's
            warnings.warn(f"{run.training_run_id}: decoder refit skipped ({short_error(e)}); the "
                          "decoder stays as trained", RuntimeWarning, stacklevel=2)
