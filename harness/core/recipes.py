"""The default learning rate.

`default_lr(n_latents, d, steps, batch_size, spread)` is a power law fitted on measured
learning-rate grids (held-out FVU; the data and the fit are in docs/benchmarks.md): the best Adam
learning rate falls with the number of steps and, more slowly, with the number of latents, and
rises with the batch size and with the data's participation ratio (`spread`,
harness.core.store.statistics: a stream whose variance sits in a few massive dimensions wants a
lower rate).
"""

from __future__ import annotations

import math

# log lr = LOG_LR + STEPS_EXP log(steps / REFERENCE_STEPS)
#          + LATENTS_EXP log(n_latents / REFERENCE_LATENTS) + INPUTS_EXP log(d / REFERENCE_INPUTS)
#          + BATCH_EXP log(batch_size / REFERENCE_BATCH) + SPREAD_EXP log(spread / REFERENCE_SPREAD)
# (LOG_LR is the log rate at the references: scripts/bench_lr.py fit moves each term apart)
LOG_LR = -4.87
STEPS_EXP = -0.10
LATENTS_EXP = -0.39
INPUTS_EXP = 0.3294
BATCH_EXP = 0.55
SPREAD_EXP = 0.15
REFERENCE_STEPS = 500
REFERENCE_LATENTS = 4096
REFERENCE_INPUTS = 512
REFERENCE_BATCH = 4096
REFERENCE_SPREAD = 32.0


def default_lr(n_latents: int, d: int, steps: int, batch_size: int = REFERENCE_BATCH,
               spread: float | None = None) -> float:
    """The learning rate an SAE of `n_latents` over `d` inputs trains best with in `steps` Adam
    steps of `batch_size` tokens, on data of participation ratio `spread` (None: the
    reference)."""
    spread = REFERENCE_SPREAD if spread is None else spread
    return math.exp(LOG_LR + STEPS_EXP * math.log(max(1, steps) / REFERENCE_STEPS)
                    + LATENTS_EXP * math.log(n_latents / REFERENCE_LATENTS)
                    + INPUTS_EXP * math.log(d / REFERENCE_INPUTS)
                    + BATCH_EXP * math.log(batch_size / REFERENCE_BATCH)
                    + SPREAD_EXP * math.log(spread / REFERENCE_SPREAD))
