"""What training produces and the signals that end it: EvalResult, TrainingHistory,
MemberOutcome, and the exceptions (StopTraining, TrainingInterrupted, SaveFailed;
TrainingDiverged comes from harness.core.training.loss_monitor)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.training.loss_monitor import TrainingDiverged

if TYPE_CHECKING:
    from harness.core.sae import SparseAutoencoder

__all__ = ["HISTORY_FIELDS", "Callback", "EvalResult", "FinalEvaluator", "MemberOutcome",
           "SaveFailed", "StopTraining", "TrainingDiverged", "TrainingHistory",
           "TrainingInterrupted"]


def short_error(e: BaseException) -> str:
    """An error in one line: its type and its message (an OSError's strerror)."""
    return f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"


class SaveFailed(OSError):
    """The trained SAE could not be written to its folder; it was written to `fallback`."""

    def __init__(self, target: Path, fallback: Path | None, cause: BaseException) -> None:
        kept = (f"the trained SAE was saved to {fallback} instead" if fallback is not None
                else "no fallback folder was writable either: the weights are lost")
        super().__init__(f"could not save to {target} ({short_error(cause)}); {kept}")
        self.target, self.fallback, self.cause = target, fallback, cause


class TrainingInterrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt
    """`stop` asked training to end (SIGTERM, SIGINT): every active run with a checkpoint path
    wrote its checkpoint first. A BaseException, so handlers of ordinary errors let it pass."""

    def __init__(self, reason: str, checkpoints: dict[str, int]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.checkpoints = checkpoints
        """Checkpoint file -> the step it holds."""


class StopTraining(Exception):  # noqa: N818 - a control signal, like optuna.TrialPruned
    """Raised by a callback to end training early; `reason` is kept in the history."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class EvalResult:
    """One evaluation during training (what callbacks and loggers receive)."""

    step: int
    """Optimisation steps done."""
    epoch: int
    """Epoch the evaluation fell in (0-based)."""
    tokens: int
    """Training tokens seen so far."""
    loss: float
    """Mean training loss since the previous evaluation."""
    r2: float
    """Held-out explained variance, 1 - fvu."""
    fvu: float
    """Held-out fraction of variance unexplained."""
    mse: float
    """Held-out mean squared error per element."""
    l0: float
    """Held-out mean active latents per token."""
    dead_features: int
    """Latents that did not fire in the last dead_window_tokens training tokens."""
    dead_ratio: float
    """dead_features / n_latents."""
    lr: float
    """Learning rate at this step."""
    elapsed_s: float
    """Wall-clock seconds since training started."""


HISTORY_FIELDS = [f.name for f in dataclasses.fields(EvalResult)]


@dataclass(eq=False)
class TrainingHistory(Mapping[str, Any]):
    """Per-evaluation curves plus what the run was; a read-only mapping like the seed's dict:
    `history["r2"]`, `history.get("l0")`, `keys()`, `items()`. `n_evals` counts evaluations."""

    step: list[int] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    r2: list[float] = field(default_factory=list)
    fvu: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    l0: list[float] = field(default_factory=list)
    dead_features: list[int] = field(default_factory=list)
    dead_ratio: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)
    stop_reason: str | None = None
    """Why a callback stopped training early, or None if it ran to the end."""
    dead_window_tokens: int = 0
    """The dead-feature window actually used."""
    n_train_tokens: int = 0
    """Tokens in the training split."""
    n_eval_tokens: int = 0
    """Held-out tokens evaluated on."""
    wall_time_s: float = 0.0
    """Total training wall time."""
    train_loop_s: float = 0.0
    """Wall time of the steps and evaluations before the finish (this invocation's, when resumed;
    a lockstep pack's shared loop)."""
    finish_s: float = 0.0
    """Wall time of the least-squares finish (a lockstep pack's shared passes); 0 without one."""
    run_dir: str | None = None
    """Folder the SAE, config and history were saved in."""
    resumed_from_step: int | None = None
    """The step of the checkpoint this run resumed from, or None if it started fresh."""
    decoder_refit_tokens: int | None = None
    """Training tokens the decoder was refit on (config.decoder_refit), or None: no refit (off,
    above decoder_refit_max_latents, or stopped early). The last evaluation follows the refit."""
    encoder_refit_tokens: int | None = None
    """Training tokens the encoder was refit on (config.encoder_refit), or None: no encoder refit.
    """
    kind: str = "sae"
    """"sae", "transcoder" or "skip_transcoder": a transcoder's r2, fvu and mse are of its
    target (target_layer_signature), not of what it reads."""
    target_layer_signature: str | None = None
    """The layer a transcoder reconstructs; None for an SAE."""
    final_metrics: dict[str, float] = field(default_factory=dict)
    """What LockstepMember.final_evaluators measured on the finished SAE (the downstream
    metrics of harness.evaluate), with `<evaluator>_s`, the seconds each took."""

    def append(self, result: EvalResult) -> None:
        for name in HISTORY_FIELDS:
            getattr(self, name).append(getattr(result, name))

    def __getitem__(self, key: str) -> Any:
        if key not in _HISTORY_KEYS:
            raise KeyError(f"{key!r}; history keys: {list(_HISTORY_KEYS)}")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_HISTORY_KEYS)

    def __len__(self) -> int:
        return len(_HISTORY_KEYS)

    @property
    def n_evals(self) -> int:
        """Evaluations recorded."""
        return len(self.step)

    @property
    def finish_share(self) -> float:
        """The finish's time over the training loop's (0 without a finish)."""
        return self.finish_s / self.train_loop_s if self.train_loop_s > 0 else 0.0

    @property
    def final(self) -> EvalResult | None:
        """The last evaluation, if any."""
        if not self.step:
            return None
        return EvalResult(**{name: getattr(self, name)[-1] for name in HISTORY_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_HISTORY_KEYS = tuple(f.name for f in dataclasses.fields(TrainingHistory))


@dataclass
class MemberOutcome:
    """How one member of a pack ended: its history, the error that stopped it, or both (a run
    that trained but could not be saved where asked: SaveFailed)."""

    history: TrainingHistory | None
    error: Exception | None = None


Callback = Callable[[EvalResult], None]
"""Sees every evaluation; may raise StopTraining."""
FinalEvaluator = Callable[["SparseAutoencoder"], Mapping[str, float]]
"""Measures a finished SAE (after the refits and the last evaluation); named by its __name__."""
