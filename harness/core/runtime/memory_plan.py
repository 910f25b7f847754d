"""A run's host memory, planned in bytes before anything is read (`memory_budget`).

What a run holds on the host, and how the budget sizes it:

- fixed: what the process holds already (the interpreter, torch, a sweep worker's language
  model), the SAEs, their gradients, optimiser state and one step's working set when they train
  on the CPU (harness.core.runtime.footprint, and STEP_ROWS [B, d] temporaries; on a GPU they live
  there), the batches in flight in float32, and one piece of the store while it is read;
- the held-out tokens, in the store's dtype (converted a batch at a time when evaluated): at most
  `max_eval_tokens`, EVAL_BYTES and EVAL_SHARE of what the fixed part leaves;
- the finish's kept batches (float32): at most their cap and STASH_SHARE of it;
- the training tokens, in the store's dtype: the whole training split when the run reads all of
  it (an epoch or more) and it fits in what is left and in `in_memory_bytes`; else a shuffle
  buffer of at most `shuffle_buffer_tokens`, BUFFER_BYTES, what is left, and the tokens the run
  trains (a short run fills no more than it uses, so it starts at once).

A budget that cannot hold the fixed part and one batch of tokens is refused with the smallest
that would. None means the machine's available memory (MemAvailable) times HOST_SHARE, divided
among the workers a sweep starts on the node.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass

from harness.errors import SaesweepError

HOST_SHARE = 0.8
"""Share of the machine's available memory a default budget takes: the rest is for the OS, the
libraries' own allocations and the page cache a stream reads through."""
EVAL_SHARE = 0.1
"""The held-out tokens' share of what the fixed part leaves."""
STASH_SHARE = 0.1
"""The finish's kept batches' share of it."""
EVAL_BYTES = 128 << 20
"""The held-out tokens take at most this much at any width: `max_eval_tokens` (65,536) binds
up to d = 1,024 in fp16 (512 in float32), this above (32,768 tokens at d = 2,048 in fp16)."""
BUFFER_BYTES = 384 << 20
"""A shuffle buffer takes at most this much (98,304 tokens at d = 2,048 in fp16; the held-out
FVU at each buffer size against a full shuffle's: docs/data.md)."""
REUSE_FACTOR = 4
"""Freed blocks kept for reuse (harness.core.runtime.cpu_memory) stay resident: with a limit of L
bytes a run's peak was up to about 3.5 L above its live tensors (d = 2,048, n = 4,096:
docs/data.md), so the plan sets REUSE_FACTOR x L aside for it, or turns it off when the budget
cannot."""
STEP_ROWS = 8
"""[B, d] float32 temporaries of a CPU step beside the SAE's own terms (reconstruction, error,
their gradients): the count that keeps the plan above the peaks measured at d = 2,048 and 4,096
(docs/data.md)."""
F32 = 4


class MemoryBudgetError(SaesweepError, ValueError):
    """A budget too small for the run; the message says what would fit."""


def available_memory() -> int:
    """The machine's available memory in bytes (MemAvailable, else free physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_budget(workers: int = 1) -> int:
    """The budget of one of `workers` runs on this machine."""
    return int(available_memory() * HOST_SHARE / max(1, workers))


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclass(frozen=True)
class MemoryPlan:
    """How one run's host memory is divided (bytes, and the sizes in tokens they give)."""

    budget: int
    """The run's host memory."""
    fixed: int
    """SAEs, optimiser and step on the CPU, batches in flight, one shard being read."""
    row_bytes: int
    """One token in the store's dtype."""
    buffer_tokens: int
    """Training tokens held at once: the whole split when `in_memory`, else the shuffle buffer."""
    in_memory: bool
    """The training split is read once and held."""
    eval_tokens: int
    """Held-out tokens evaluated on (held on the host when `eval_on_host`)."""
    eval_on_host: bool
    """False when a GPU holds them (then they cost the host nothing)."""
    stash_bytes: int
    """The most the finish's kept batches may take."""
    reuse_bytes: int = 0
    """The freed-block reuse limit the run keeps (harness.core.runtime.cpu_memory); 0 = off (the
    budget could not also hold what it keeps)."""

    @property
    def total(self) -> int:
        """The most the plan holds at once."""
        held_eval = self.eval_tokens * self.row_bytes if self.eval_on_host else 0
        return (self.fixed + self.buffer_tokens * self.row_bytes + held_eval + self.stash_bytes
                + REUSE_FACTOR * self.reuse_bytes)

    def describe(self) -> str:
        where = "in memory" if self.in_memory else "streamed"
        return (f"memory budget {gib(self.budget)}: {gib(self.fixed)} for the SAE, its step and "
                f"the batches; {self.buffer_tokens:,} training tokens {where} "
                f"({gib(self.buffer_tokens * self.row_bytes)}); {self.eval_tokens:,} held-out "
                f"tokens; finish batches up to {gib(self.stash_bytes)}")


OPTIMIZER_IMPORT_BYTES = 96 << 20
"""What torch's optimizers bring when the first one is built (torch._dynamo, sympy: 69 MiB
measured), counted until they are in the process."""


def process_memory() -> int:
    """What this process holds now (anonymous resident bytes): the interpreter, torch, whatever
    was loaded before the run (a sweep worker's language model), and what building the first
    optimizer will import. The budget counts it."""
    pending = 0 if "torch._dynamo" in sys.modules else OPTIMIZER_IMPORT_BYTES
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024 + pending
    except OSError:
        pass
    return pending


def fixed_bytes(*, d: int, itemsize: int, batch_size: int, read_rows: int, model_bytes: int,
                host_device: bool, prefetch_batches: int = 0, baseline: int = 0) -> int:
    """The plan's fixed part (the module docstring); with one batch of tokens beside it, the
    least a budget must hold."""
    in_flight = (2 + (0 if host_device else prefetch_batches)) * batch_size * d * F32
    if host_device:
        in_flight += STEP_ROWS * batch_size * d * F32
    return (baseline + (model_bytes if host_device else 0) + in_flight
            + read_rows * d * itemsize)


def plan_memory(*, budget: int, d: int, itemsize: int, n_train: int, n_heldout: int,
                planned_tokens: int, batch_size: int, shard_tokens: int, max_eval_tokens: int,
                shuffle_buffer_tokens: int, in_memory_bytes: int, stash_wanted: int,
                model_bytes: int, host_device: bool, prefetch_batches: int = 0,
                baseline: int = 0, reuse_bytes: int = 0) -> MemoryPlan:
    """The plan for one run (see the module docstring); `baseline`: what the process holds
    already; `reuse_bytes`: the freed-block reuse limit wanted (kept only where the budget also
    holds REUSE_FACTOR times it beside a full plan). MemoryBudgetError when `budget` cannot
    hold the fixed part and one batch."""
    if reuse_bytes:
        plain = plan_memory(budget=budget, d=d, itemsize=itemsize, n_train=n_train,
                            n_heldout=n_heldout, planned_tokens=planned_tokens,
                            batch_size=batch_size, shard_tokens=shard_tokens,
                            max_eval_tokens=max_eval_tokens,
                            shuffle_buffer_tokens=shuffle_buffer_tokens,
                            in_memory_bytes=in_memory_bytes, stash_wanted=stash_wanted,
                            model_bytes=model_bytes, host_device=host_device,
                            prefetch_batches=prefetch_batches, baseline=baseline)
        if plain.total + REUSE_FACTOR * reuse_bytes <= budget:
            return dataclasses.replace(plain, reuse_bytes=reuse_bytes)
        return plain
    row = d * itemsize
    fixed = fixed_bytes(d=d, itemsize=itemsize, batch_size=batch_size, read_rows=shard_tokens,
                        model_bytes=model_bytes, host_device=host_device,
                        prefetch_batches=prefetch_batches, baseline=baseline)
    least = fixed + batch_size * row
    if budget < least:
        raise MemoryBudgetError(
            f"memory_budget {gib(budget)} cannot hold this run: it needs at least {gib(least)} "
            f"({gib(baseline)} this process holds already, {gib(fixed - baseline)} for the "
            f"SAE, its step, the batches in flight and a piece of the store being read, and "
            f"one batch of {batch_size} tokens); raise memory_budget or lower batch_size or the "
            "SAE's size")
    rest = budget - fixed
    eval_tokens = min(max_eval_tokens, n_heldout)
    if host_device:
        eval_tokens = min(eval_tokens, max(1, int(min(EVAL_SHARE * rest, EVAL_BYTES) // row)))
    stash = min(stash_wanted, int(STASH_SHARE * rest)) if host_device else stash_wanted
    left = rest - (eval_tokens * row if host_device else 0) - (stash if host_device else 0)
    in_memory = planned_tokens >= n_train and n_train * row <= min(left, in_memory_bytes)
    if in_memory:
        buffer = n_train
    else:
        buffer = max(batch_size, min(planned_tokens, n_train, shuffle_buffer_tokens,
                                     min(left, BUFFER_BYTES) // row))
    return MemoryPlan(budget=budget, fixed=fixed, row_bytes=row, buffer_tokens=buffer,
                      in_memory=in_memory, eval_tokens=eval_tokens, eval_on_host=host_device,
                      stash_bytes=stash)
