"""The default learning-rate rule: each input moves it in the direction its fit found, and the
trainer and the sweep resolve it from the run's own steps and batch size."""

from __future__ import annotations

import pytest

from harness import SaeTrainingConfig
from harness.core import recipes
from harness.core.recipes import default_lr


def test_each_input_moves_the_rate_in_the_fitted_direction():
    base = default_lr(3072, 384, 500, 512)
    # more steps and more latents: a lower rate; larger batches: a higher one
    assert default_lr(3072, 384, 1000, 512) < base < default_lr(3072, 384, 250, 512)
    assert default_lr(6144, 384, 500, 512) < base < default_lr(1536, 384, 500, 512)
    assert default_lr(3072, 384, 500, 256) < base < default_lr(3072, 384, 500, 4096)
    # a power law: doubling each input scales the rate by 2 ** its exponent
    assert default_lr(3072, 384, 1000, 512) / base == pytest.approx(2 ** recipes.STEPS_EXP)
    assert default_lr(3072, 384, 500, 1024) / base == pytest.approx(2 ** recipes.BATCH_EXP)
    assert default_lr(6144, 384, 500, 512) / base == pytest.approx(2 ** recipes.LATENTS_EXP)
    assert default_lr(3072, 768, 500, 512) / base == pytest.approx(2 ** recipes.INPUTS_EXP)


def test_the_trainer_resolves_the_rule_from_its_batch_size():
    cfg = SaeTrainingConfig(batch_size=1024)
    assert cfg.resolved_lr(2048, 256, 300) == default_lr(2048, 256, 300, 1024)
    assert SaeTrainingConfig(lr=1e-3).resolved_lr(2048, 256, 300) == 1e-3
