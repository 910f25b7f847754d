"""The one shared SAE trainer, split by job.

    config.py          SaeTrainingConfig: six option groups with flat aliases
    results.py         EvalResult, TrainingHistory, MemberOutcome, the exceptions
    trainer.py         SaeTrainer and LockstepMember (the public face)
    loop.py            the shared loop over batches
    run.py             one member's state, step and evaluation
    optim.py           Adam and the learning-rate schedule
    finish.py          the least-squares finish (decoder and encoder refits)
    checkpoint.py      versioned resumable checkpoints
    outputs.py         what a finished run writes
    wandb_callback.py  W&B as an evaluation callback

sweep/ and report/ import only config and results.
"""

from harness.core.training.config import SaeTrainingConfig
from harness.core.training.results import (
    EvalResult,
    MemberOutcome,
    SaveFailed,
    StopTraining,
    TrainingDiverged,
    TrainingHistory,
    TrainingInterrupted,
)


def __getattr__(name: str) -> object:  # the trainer loads on first use: results stay light
    if name in ("LockstepMember", "SaeTrainer"):
        from harness.core.training import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module 'harness.core.training' has no attribute {name!r}")

__all__ = ["EvalResult", "LockstepMember", "MemberOutcome", "SaeTrainer", "SaeTrainingConfig",
           "SaveFailed", "StopTraining", "TrainingDiverged", "TrainingHistory",
           "TrainingInterrupted"]
