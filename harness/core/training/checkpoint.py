"""Resumable checkpoints of one run: weights, optimiser, schedule, dead-feature counters, loss
monitor, history, data position and RNG, in one file written atomically.

A checkpoint carries `format`. One of another format, or with keys this version does not know or
lacks, is refused with a message that names the file and what to do: a resume never misreads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness.core.atomic import write_torch
from harness.core.training.loss_monitor import LossMonitor
from harness.core.training.results import HISTORY_FIELDS

if TYPE_CHECKING:
    from harness.core.training.run import MemberRun

CHECKPOINT_FORMAT = 3
"""The layout this version writes and reads (2: an SAE keeps only its activation's own state,
so a TopK SAE has no threshold buffer; 3: the weights' moving average)."""
_KEYS = frozenset({"format", "step", "epoch", "next_index", "sae", "average", "optimizer",
                   "scheduler",
                   "dead_tokens", "dead_last_fired", "history", "elapsed_s", "rng",
                   *LossMonitor.STATE_KEYS})


def write_checkpoint(run: MemberRun, epoch: int, next_index: int) -> int:
    """Write everything needed to go on from batch `next_index` of `epoch`; returns the step it
    holds."""
    assert run.checkpoint_path is not None
    write_torch(run.checkpoint_path, {
        "format": CHECKPOINT_FORMAT, "step": run.step_count, "epoch": epoch,
        "next_index": next_index,
        "sae": run.sae.state_dict(), "optimizer": run.opt.state_dict(),
        "average": run.average.tensors if run.average is not None else None,
        "scheduler": run.sched.state_dict(), "dead_tokens": run.dead.tokens,
        "dead_last_fired": run.dead.last_fired, **run.losses.state(),
        "history": {name: list(getattr(run.history, name)) for name in HISTORY_FIELDS},
        "elapsed_s": time.perf_counter() - run.start, "rng": torch.get_rng_state(),
    })
    return run.step_count


def read_checkpoint(run: MemberRun, path: Path) -> None:
    """Restore `run` from the checkpoint at `path` (refused unless this version wrote it)."""
    state = torch.load(path, map_location=run.device, weights_only=True)
    redo = "delete it to train this run from the start"
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: a checkpoint of format {fmt!r}; this saesweep reads format "
                         f"{CHECKPOINT_FORMAT}: {redo}")
    unknown, lacking = sorted(set(state) - _KEYS), sorted(_KEYS - set(state))
    if unknown or lacking:
        raise ValueError(f"{path}: the checkpoint has unknown keys {unknown} and lacks {lacking} "
                         f"(written by another saesweep version): {redo}")
    missing = [name for name in HISTORY_FIELDS if name not in state["history"]]
    if missing:
        raise ValueError(f"{path}: the checkpoint's history has no {missing} (written by "
                         f"another saesweep version): {redo}")
    run.sae.load_state_dict(state["sae"])
    if run.average is not None and state["average"] is not None:
        for mine, saved in zip(run.average.tensors, state["average"], strict=True):
            mine.copy_(saved)
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.step_count, run.epoch = int(state["step"]), int(state["epoch"])
    run.position = (int(state["epoch"]), int(state["next_index"]))
    run.dead.tokens = int(state["dead_tokens"])
    run.dead.last_fired = state["dead_last_fired"].to(run.device)
    run.losses.load(state)
    for name in HISTORY_FIELDS:
        setattr(run.history, name, list(state["history"][name]))
    run.history.resumed_from_step = run.step_count
    run.start = time.perf_counter() - float(state["elapsed_s"])
    torch.set_rng_state(state["rng"].cpu())
