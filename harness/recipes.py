"""The default learning rate, and the training recipe before the quality work.

`default_lr(steps)` is fitted on measured learning-rate grids (scripts/bench_quality.py, held-out
FVU; the data are in the README's *Quality* section): the best Adam learning rate of a TopK SAE
depends on how many steps it trains, not, over the widths measured (n_latents 256-6144, d 64 and
384), on its size. `LEGACY_SAE` and `LEGACY_TRAINING` hold, at their old values, the settings the
quality work changed, so that the old recipe stays one setting away (`--recipe legacy`):
`TopKSae(..., **LEGACY_SAE)` trained with `SaeTrainingConfig(..., **LEGACY_TRAINING)`.
"""

from __future__ import annotations

LR_SCALE = 0.0802
"""The fitted learning rate of a one-step run."""
LR_STEPS_EXPONENT = -0.615
"""How the best learning rate falls with the number of steps."""

LEGACY_SAE: dict[str, float] = {"encoder_init_scale": 1.0}
"""TopKSae arguments: unit-norm encoder rows (now 1/sqrt(3))."""
LEGACY_TRAINING: dict[str, float] = {"lr": 2e-4}
"""SaeTrainingConfig fields: a fixed learning rate (now default_lr of the planned steps)."""


def default_lr(steps: int) -> float:
    """The learning rate a run of `steps` optimisation steps trains best with."""
    return LR_SCALE * max(1, steps) ** LR_STEPS_EXPONENT
