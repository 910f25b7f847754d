"""The shared loop: every batch is read and moved once and fed to every active run; each run is
evaluated on its own schedule, and the finish follows the last step."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from harness.core.loader import ActivationLoader
from harness.core.training.config import SaeTrainingConfig
from harness.core.training.finish import refit, stash_size
from harness.core.training.results import TrainingInterrupted
from harness.core.training.run import MemberRun


def drive(loader: ActivationLoader, runs: list[MemberRun], cfg: SaeTrainingConfig,
          stop: Callable[[], str | None] | None = None) -> None:
    """Feed every batch to every active run; evaluate each on its own schedule. A run resumed
    from a checkpoint skips the batches before its position."""
    total = cfg.planned_steps(loader.batches_per_epoch)
    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    bar = tqdm(total=total, disable=not show, unit="step", dynamic_ncols=True)
    active = list(runs)
    first_epoch = min(run.position[0] for run in runs)  # whole epochs every run is past
    done = first_epoch * loader.batches_per_epoch
    bar.update(done)
    start = time.perf_counter()
    keep = stash_size(loader, runs, total) if first_epoch == 0 else 0
    stash: list[torch.Tensor] = []  # the finish's batches, kept as epoch 0 yields them
    try:
        for epoch in range(first_epoch, cfg.epochs):
            for index, x in enumerate(loader.train_batches(epoch)):
                if epoch == 0 and index < keep:
                    stash.append(x.to(loader.source.dtype, copy=True))  # in the store's dtype
                for run in list(active):
                    if (epoch, index) < run.position:
                        continue
                    if not run.guarded(run.step, x, epoch, index):
                        active.remove(run)
                bar.update(1)
                done += 1
                if active and len(runs) == 1:
                    bar.set_postfix_str(runs[0].postfix)
                reason = stop() if stop is not None else None
                if reason:
                    # a run still skipping to its resume position stays at that position
                    raise TrainingInterrupted(reason, {
                        str(run.checkpoint_path): run.checkpoint(
                            *max((epoch, index + 1), run.position))
                        for run in active if run.checkpoint_path is not None})
                if not active or done >= total:
                    break
            last = done >= total or epoch == cfg.epochs - 1
            if last:
                for run in list(active):  # a run that diverged since its last read stops here
                    if not run.guarded(run.losses.check):
                        active.remove(run)
                finish_start = time.perf_counter()
                refit(loader, [run for run in active if run.refits], total, stop, stash,
                      loop_s=finish_start - start)
                stash.clear()
                for run in active:
                    run.history.train_loop_s = finish_start - start
                    if run.refits:
                        run.history.finish_s = time.perf_counter() - finish_start
            for run in list(active):
                if epoch < run.position[0]:
                    continue  # a resumed run already ended this epoch
                if not run.guarded(run.end_of_epoch, epoch, last):
                    active.remove(run)
            if not active or last:
                return
    finally:
        bar.close()
