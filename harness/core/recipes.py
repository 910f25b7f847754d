"""The default learning rate.

`default_lr(n_latents, d, steps)` is a power law fitted on measured learning-rate grids
(scripts/bench_quality.py, held-out FVU; the data and the fit are in docs/benchmarks.md): the best
Adam learning rate falls with the number of steps and, more slowly, with the number of latents.
"""

from __future__ import annotations

import math

# log lr = LOG_LR + STEPS_EXP log steps + LATENTS_EXP log n_latents + INPUTS_EXP log d
LOG_LR = -4.381
STEPS_EXP = -0.3295
LATENTS_EXP = -0.1382
INPUTS_EXP = 0.3294

def default_lr(n_latents: int, d: int, steps: int) -> float:
    """The learning rate an SAE of `n_latents` over `d` inputs trains best with in `steps` Adam
    steps (fitted on n_latents 256-6144, d 64 and 384, 49-244 steps)."""
    return math.exp(LOG_LR + STEPS_EXP * math.log(max(1, steps))
                    + LATENTS_EXP * math.log(n_latents) + INPUTS_EXP * math.log(d))
