"""The default learning rate, and the training recipe before the quality work.

`default_lr(n_latents, d, steps)` is a power law fitted on measured learning-rate grids
(scripts/bench_quality.py, held-out FVU; the data and the fit are in docs/benchmarks.md): the best
Adam learning rate falls with the number of steps and, more slowly, with the number of latents.
`LEGACY_SAE` and `LEGACY_TRAINING` hold, at their old values, the settings the quality work
changed, so that the old recipe stays one setting away (`--recipe legacy`): `TopKSae(...,
**LEGACY_SAE)` trained with `SaeTrainingConfig(..., **LEGACY_TRAINING)`.
"""

from __future__ import annotations

import math

# log lr = LOG_LR + STEPS_EXP log steps + LATENTS_EXP log n_latents + INPUTS_EXP log d
LOG_LR = -4.381
STEPS_EXP = -0.3295
LATENTS_EXP = -0.1382
INPUTS_EXP = 0.3294

LEGACY_SAE: dict[str, float] = {"encoder_init_scale": 1.0}
"""TopKSae arguments: unit-norm encoder rows (now 1/sqrt(3))."""
LEGACY_TRAINING: dict[str, float | bool] = {"lr": 2e-4, "decoder_refit": False,
                                            "decoder_lr_scale": 1.0, "lr_warmup_steps": 0}
"""SaeTrainingConfig fields: a fixed learning rate (now default_lr of the size and steps), the
decoder as Adam left it (now refit by least squares, harness.core.refit), one learning rate for
all parameters (now 4x for the decoder rows) and no warm-up (now a tenth of the steps)."""


def default_lr(n_latents: int, d: int, steps: int) -> float:
    """The learning rate an SAE of `n_latents` over `d` inputs trains best with in `steps` Adam
    steps (fitted on n_latents 256-6144, d 64 and 384, 49-244 steps)."""
    return math.exp(LOG_LR + STEPS_EXP * math.log(max(1, steps))
                    + LATENTS_EXP * math.log(n_latents) + INPUTS_EXP * math.log(d))
