"""The training recipe before the quality work, so that it stays one setting away.

`LEGACY_RECIPE` holds, at their old values, the settings the quality work changed: TopKSae
arguments and SaeTrainingConfig fields. `scripts/bench_quality.py --recipe legacy` trains with it.
"""

from __future__ import annotations

LEGACY_RECIPE: dict[str, object] = {
    "encoder_init_scale": 1.0,  # TopKSae: unit-norm encoder rows (now 1/sqrt(3))
}
