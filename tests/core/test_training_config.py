"""SaeTrainingConfig: groups with flat aliases, the lists derived from them, and checkpoints
that refuse what this version did not write."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from harness import SaeTrainingConfig, TopKSae
from harness.core.training import LockstepMember, SaeTrainer, TrainingInterrupted
from harness.core.training.checkpoint import CHECKPOINT_FORMAT
from harness.core.training.config import (
    GROUPS,
    LOCKSTEP_FIELDS,
    NOT_SAMPLED,
    OWNER,
    DataOptions,
    OptimiserOptions,
)


def test_flat_options_and_groups_are_one_config():
    flat = SaeTrainingConfig(epochs=2, lr=1e-3, use_wandb=True)
    grouped = SaeTrainingConfig(data=DataOptions(epochs=2), optimiser=OptimiserOptions(lr=1e-3),
                                logging={"use_wandb": True})
    assert flat == grouped and flat.lr == 1e-3 and flat.optimiser.lr == 1e-3
    flat.lr = 2e-3
    assert flat.optimiser.lr == 2e-3 and flat.to_dict()["lr"] == 2e-3
    assert flat.replace(lr=4e-3).lr == 4e-3 and flat.lr == 2e-3
    assert dataclasses.replace(flat, epochs=3).epochs == 3
    assert SaeTrainingConfig.from_dict(flat.to_dict()) == flat
    assert list(flat.to_dict()) == SaeTrainingConfig.field_names() == list(OWNER)
    with pytest.raises(ValueError, match="must be > 0"):
        flat.replace(batch_size=0)
    with pytest.raises(TypeError, match="unknown option"):
        SaeTrainingConfig(learning_rate=1e-3)
    with pytest.raises(AttributeError, match="no option 'learning_rate'"):
        _ = flat.learning_rate


def test_the_harness_lists_are_derived_from_the_groups():
    data = {f.name for f in dataclasses.fields(GROUPS["data"])}
    logging = {f.name for f in dataclasses.fields(GROUPS["logging"])}
    assert data <= set(LOCKSTEP_FIELDS)
    assert set(LOCKSTEP_FIELDS) - data == {"device", "dtype", "encoder_refit_max_tokens"}
    assert logging <= NOT_SAMPLED
    assert NOT_SAMPLED - logging == {"device", "progress", "max_tokens", "memory_budget"}
    assert "lr" not in NOT_SAMPLED and "lr" not in LOCKSTEP_FIELDS


def _interrupted_checkpoint(store: Path, path: Path) -> None:
    polls = iter(range(1, 10_000))
    member = LockstepMember(TopKSae(32, 16, 4, seed=0),
                            SaeTrainingConfig(batch_size=256, progress=False),
                            checkpoint_path=path, save=False)
    with pytest.raises(TrainingInterrupted):
        SaeTrainer.train_lockstep(store, "syn", "synthetic", [member],
                                  stop=lambda: "SIGTERM" if next(polls) == 5 else None)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.update(format=CHECKPOINT_FORMAT + 1), "a checkpoint of format"),
    (lambda s: s.update(momentum=1.0), r"unknown keys \['momentum'\]"),
    (lambda s: s.pop("rng"), r"lacks \['rng'\]"),
])
def test_a_checkpoint_this_version_did_not_write_is_refused(synthetic_store: Path,
                                                            tmp_path: Path, change, message):
    path = tmp_path / "c.pt"
    _interrupted_checkpoint(synthetic_store, path)
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    member = LockstepMember(TopKSae(32, 16, 4, seed=0),
                            SaeTrainingConfig(batch_size=256, progress=False),
                            checkpoint_path=path, save=False)
    with pytest.raises(ValueError, match=message):
        SaeTrainer.train_lockstep(synthetic_store, "syn", "synthetic", [member])
    assert path.exists()  # refused, not deleted


@pytest.mark.parametrize(("options", "message"), [
    ({"epochs": 2.5}, "SaeTrainingConfig.epochs: Input should be a valid integer (got 2.5)"),
    ({"batch_size": 512.0}, "SaeTrainingConfig.batch_size: Input should be a valid integer"),
    ({"lr": "1e-3"}, "SaeTrainingConfig.lr: Input should be a valid number (got '1e-3')"),
    ({"progress": "yes"}, "SaeTrainingConfig.progress: Input should be a valid boolean"),
    ({"data": {"seed": "0"}}, "SaeTrainingConfig.seed: Input should be a valid integer"),
])
def test_the_python_api_checks_types_as_a_space_file_does(options, message):
    with pytest.raises(ValueError) as info:
        SaeTrainingConfig(**options)
    assert str(info.value).startswith(message)
    assert SaeTrainingConfig(lr=1, adam_betas=[0.9, 0.99]).adam_betas == (0.9, 0.99)
