"""The one shared SAE trainer: every SAE in the project (demo, tests, sweep trials) trains here.

    history = SaeTrainer(sae).train(store=store, run_id="acts", layer_signature="layer_6",
                                    config=SaeTrainingConfig(epochs=2, batch_size=4096, lr=2e-4))
    history["r2"], history["l0"], history["dead_features"]

Loss = MSE + l1_lambda * (decoder-norm weighted L1 of the latents) + auxk_alpha * AuxK.
Each evaluation computes held-out r2 / fvu / mse / l0 exactly as in docs/metrics.md, plus the
dead-feature count over the last `dead_window_tokens` training tokens; callbacks see it and may
raise `StopTraining` (this is how the sweep prunes). A non-finite or exploding loss raises
`TrainingDiverged` with the step.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import re
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors
import torch
from tqdm.auto import tqdm

from harness.core.atomic import write_json, write_torch
from harness.core.cpu_memory import reuse_freed_blocks
from harness.core.encoder_refit import EncoderRefit, solve_encoder_refits
from harness.core.loader import ActivationLoader, LoaderConfig
from harness.core.loss_monitor import LossMonitor, TrainingDiverged
from harness.core.metrics import DeadFeatureTracker, DeadLatents, ReconstructionAccumulator
from harness.core.recipes import default_lr
from harness.core.refit import DecoderRefit
from harness.core.sae import TopKSae, data_center
from harness.core.store import FLOAT_DTYPES as STORE_DTYPES
from harness.core.store import ActivationSource, LocalStore, flatten_layer_name
from harness.core.wandb_log import WandbRun
from harness.version import saesweep_version

DEFAULT_DEAD_WINDOW = 10_000_000  # sparsify / dictionary_learning: dead after 10M tokens
CUDA_HOST_SYNC_EVERY = 16  # steps between reads of the device (host_sync_every=None on CUDA)
CHECKPOINT_FORMAT = 1  # a checkpoint of another format is refused, not misread
DEFAULT_WARMUP_FRACTION = 0.1  # lr_warmup_steps=None: warm up over this share of the steps
# the activation dtypes a store may hold, by torch's names (float32, float16, bfloat16, float64)
FLOAT_DTYPES = tuple(str(d).removeprefix("torch.") for d in STORE_DTYPES.values())
_DEVICE_NAME = re.compile(r"^(cpu|mps|auto|cuda(:\d+)?)$")


class SaveFailed(OSError):
    """The trained SAE could not be written to its folder; it was written to `fallback`."""

    def __init__(self, target: Path, fallback: Path | None, cause: BaseException) -> None:
        kept = (f"the trained SAE was saved to {fallback} instead" if fallback is not None
                else "no fallback folder was writable either: the weights are lost")
        super().__init__(f"could not save to {target} ({_short(cause)}); {kept}")
        self.target, self.fallback, self.cause = target, fallback, cause


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"


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


@dataclass
class SaeTrainingConfig:
    """Everything that controls one SAE training run."""

    epochs: int = 1
    """Passes over the training split of the store."""
    batch_size: int = 4096
    """Tokens per optimisation step."""
    lr: float | None = None
    """Adam learning rate (after warm-up); None = harness.core.recipes.default_lr of the SAE's
    size and the planned steps (fitted on measured lr grids)."""
    l1_lambda: float = 0.0
    """Weight of the decoder-norm weighted L1 penalty (per token; the MSE is per element)."""
    max_tokens: int | None = None
    """Use only the first `max_tokens` tokens of the store (held-out split included)."""
    eval_every: int = 0
    """Evaluate every this many steps; 0 evaluates once at the end of each epoch."""
    dead_window_tokens: int | None = None
    """A latent is dead if it did not fire in this many training tokens; None = min(10M, one
    epoch of training tokens)."""
    decoder_lr_scale: float = 4.0
    """The decoder rows' learning rate as a multiple of `lr` (a faster decoder gives the encoder
    better gradients: docs/experiments.md); 1 = one rate for all."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss on dead latents (the paper's 1/32); 0 turns it off."""
    lr_warmup_steps: int | None = None
    """Linear learning-rate warm-up from 0 over this many steps; None = a tenth of the planned
    steps (without it the first large steps kill latents at high learning rates:
    docs/experiments.md)."""
    lr_decay_fraction: float = 0.0
    """Decay the learning rate linearly to 0 over this last fraction of the planned steps
    (dictionary_learning's schedule); 0 keeps it constant."""
    max_train_tokens: int | None = None
    """Stop after this many training tokens in all (a token budget across epochs); None = every
    epoch in full."""
    checkpoint_every: int = 0
    """With a checkpoint path (LockstepMember.checkpoint_path), write a resumable checkpoint
    every this many steps, as well as when training is stopped; 0 = only when stopped."""
    decoder_refit: bool = True
    """After the last step, replace the decoder rows and output bias by their least-squares fit
    to the training tokens' codes (one more forward pass over the tokens trained on, each once;
    harness.core.refit); False = the decoder as Adam left it."""
    encoder_refit: bool = True
    """After the decoder refit, one least-squares (Gauss-Newton) step for the encoder rows towards
    the codes that decoder wants, then the decoder refit again (harness.core.encoder_refit; 6
    more passes over at most `encoder_refit_max_tokens` of the refit's tokens; TopK only, and only
    when the decoder refit runs); False = stop after the decoder refit."""
    encoder_refit_max_tokens: int = 1 << 20
    """Tokens the encoder refit fits on (the first of the decoder refit's); each keeps its k
    latent indices on the device (int32) between the passes."""
    decoder_refit_max_latents: int = 16384
    """Skip the refit above this many latents: its [n+1, n+1] system takes 4(n+1)^2 bytes on
    the device (1 GiB at 16384) and twice that in float64 for the solve."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value; None or 0 = no clipping."""
    seed: int = 0
    """Seed of the data order (shard order and shuffles); the SAE's own init takes its seed."""
    device: str | None = None
    """Device to train on ("cpu", "cuda", "cuda:1", "auto"); None keeps the SAE's device."""
    dtype: str | None = None
    """Dtype of the activations fed to the SAE; None = the SAE's parameter dtype."""
    holdout_fraction: float = 0.05
    """Fraction of the store held out for evaluation (never trained on)."""
    max_eval_tokens: int = 65536
    """Evaluate on at most this many held-out tokens."""
    shuffle_buffer_tokens: int = 1 << 20
    """Shuffle buffer when the store is streamed from disk."""
    in_memory_bytes: int = 4 << 30
    """Hold the training split in memory when it fits in this many bytes."""
    b_dec_init: str = "geometric_median"
    """How b_dec starts: "geometric_median" (the paper), "mean" or "zeros"."""
    b_dec_init_tokens: int = 8192
    """Training tokens used to initialise b_dec."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas."""
    adam_eps: float = 6.25e-10
    """Adam's epsilon (the paper's value)."""
    divergence_factor: float = 1e4
    """Also stop as diverged when the loss exceeds this factor times the first step's loss."""
    progress: bool | None = None
    """Show a tqdm bar; None = only when stderr is a terminal."""
    use_wandb: bool = False
    """Log the run to Weights & Biases."""
    wandb_project: str = "saesweep"
    """W&B project."""
    wandb_run_name: str | None = None
    """W&B run name; None = the training run id."""
    wandb_mode: str | None = None
    """"online", "offline" or "disabled"; None = online when an API key is set, else offline."""
    wandb_dir: str | None = None
    """Folder for W&B files; None = the training run's folder."""
    wandb_group: str | None = None
    """W&B group (the sweep uses the study name)."""
    wandb_job_type: str = "train"
    """W&B job type (the sweep uses "trial")."""
    sparse_backward: bool = True
    """Backward through the k chosen latents only (B*k*d work, not B*n*d); False = the dense
    autograd reference."""
    autocast_bf16: bool | None = None
    """Run the forward pass under bf16 autocast with fp32 master weights; None = on CUDA (as
    sparsify and SAELens train), off on CPU (where bf16 matmuls are slower)."""
    host_sync_every: int | None = None
    """Steps between the trainer's reads of device state: the divergence check and the dead
    latents AuxK trains (a divergence is caught at most this many steps late, a latent joins
    or leaves AuxK as late); None = every step on CPU, where a read costs nothing, 16 on
    CUDA."""
    prefetch_batches: int = 2
    """Batches a background thread prepares ahead of the step when training on a GPU; 0 =
    none."""
    cpu_reuse_freed_memory: bool = True
    """On CPU with glibc, keep freed blocks up to 1 GiB for the next step instead of unmapping
    them (harness.core.cpu_memory): 3-11% faster steps at d=768. Process-wide and kept once set."""

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "lr", "max_eval_tokens", "shuffle_buffer_tokens",
                    "b_dec_init_tokens", "divergence_factor", "decoder_refit_max_latents",
                    "decoder_lr_scale", "encoder_refit_max_tokens")
        for name in positive:
            if name == "lr" and self.lr is None:
                continue
            if not getattr(self, name) > 0:
                raise ValueError(f"SaeTrainingConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("l1_lambda", "auxk_alpha", "lr_warmup_steps", "eval_every",
                     "lr_decay_fraction", "checkpoint_every"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(
                    f"SaeTrainingConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_tokens", "max_train_tokens"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"SaeTrainingConfig.{name} must be > 0, got "
                                 f"{getattr(self, name)}")
        if self.host_sync_every is not None and self.host_sync_every <= 0:
            raise ValueError("SaeTrainingConfig.host_sync_every must be > 0 or None, got "
                             f"{self.host_sync_every}")
        if self.lr_decay_fraction > 1:
            raise ValueError("SaeTrainingConfig.lr_decay_fraction must be in [0, 1], got "
                             f"{self.lr_decay_fraction}")
        if self.dead_window_tokens is not None and self.dead_window_tokens <= 0:
            raise ValueError("SaeTrainingConfig.dead_window_tokens must be > 0, got "
                             f"{self.dead_window_tokens}")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise ValueError("SaeTrainingConfig.b_dec_init must be geometric_median, mean or "
                             f"zeros, got {self.b_dec_init!r}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError("SaeTrainingConfig.holdout_fraction must be in (0, 1), got "
                             f"{self.holdout_fraction}")
        if self.dtype is not None and self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"SaeTrainingConfig.dtype must be one of {list(FLOAT_DTYPES)} or "
                             f"None, got {self.dtype!r}")
        if self.device is not None and not _DEVICE_NAME.match(self.device):
            raise ValueError("SaeTrainingConfig.device must be cpu, cuda, cuda:N, mps, auto or "
                             f"None, got {self.device!r}")
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]  # YAML gives lists

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> SaeTrainingConfig:
        """Build from a mapping; an unknown key is an error that names it."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{where}: unknown SaeTrainingConfig field(s) {unknown}; known: "
                             f"{cls.field_names()}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def loader_config(self) -> LoaderConfig:
        """How this run's tokens are split, shuffled and batched."""
        return LoaderConfig(
            batch_size=self.batch_size, holdout_fraction=self.holdout_fraction,
            max_tokens=self.max_tokens, max_eval_tokens=self.max_eval_tokens,
            shuffle_buffer_tokens=self.shuffle_buffer_tokens,
            in_memory_bytes=self.in_memory_bytes, seed=self.seed,
            prefetch_batches=self.prefetch_batches)

    def planned_tokens(self, n_train_tokens: int) -> int:
        """Training tokens this config sees in full: every epoch, capped by the budget."""
        tokens = self.epochs * n_train_tokens
        return min(tokens, self.max_train_tokens) if self.max_train_tokens else tokens

    def planned_steps(self, batches_per_epoch: int) -> int:
        """Optimisation steps this config runs in full: every epoch, capped by the budget."""
        steps = self.epochs * batches_per_epoch
        if self.max_train_tokens is not None:
            steps = min(steps, math.ceil(self.max_train_tokens / self.batch_size))
        return steps

    def steps_on(self, source: ActivationSource) -> int:
        """The planned steps on an activation source (its split is arithmetic: nothing read)."""
        return self.planned_steps(ActivationLoader(source, self.loader_config()).batches_per_epoch)

    def resolved_lr(self, n_latents: int, d: int, steps: int) -> float:
        """`lr`, or the default learning rate for this SAE size and number of steps."""
        return self.lr if self.lr is not None else default_lr(n_latents, d, steps)

    def resolved_for(self, device: torch.device, n_latents: int, d: int,
                     steps: int) -> SaeTrainingConfig:
        """This config with every None that depends on the run filled in: what it trains with
        (and what is saved with the SAE)."""
        cuda = device.type == "cuda"
        return dataclasses.replace(
            self, lr=self.resolved_lr(n_latents, d, steps),
            lr_warmup_steps=(self.lr_warmup_steps if self.lr_warmup_steps is not None
                             else round(DEFAULT_WARMUP_FRACTION * steps)),
            autocast_bf16=cuda if self.autocast_bf16 is None else self.autocast_bf16,
            host_sync_every=self.host_sync_every or (CUDA_HOST_SYNC_EVERY if cuda else 1))


def lr_factor(step: int, warmup_steps: int, total_steps: int, decay_fraction: float) -> float:
    """Learning-rate multiplier of 0-based `step`: linear warm-up from 0, constant, then a
    linear decay that would reach 0 one step after the last."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    decay_steps = round(decay_fraction * total_steps)
    if decay_steps > 0:
        factor = min(factor, (total_steps - step) / decay_steps)
    return max(factor, 0.0)


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
    def final(self) -> EvalResult | None:
        """The last evaluation, if any."""
        if not self.step:
            return None
        return EvalResult(**{name: getattr(self, name)[-1] for name in HISTORY_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_HISTORY_KEYS = tuple(f.name for f in dataclasses.fields(TrainingHistory))


Callback = Callable[[EvalResult], None]
FinalEvaluator = Callable[[TopKSae], Mapping[str, float]]
"""Measures a finished SAE (after the refits and the last evaluation); named by its __name__."""

# fields that shape the data stream: SAEs trained in lockstep must agree on them
DATA_FIELDS = ("epochs", "batch_size", "max_tokens", "max_train_tokens", "holdout_fraction",
               "max_eval_tokens", "shuffle_buffer_tokens", "in_memory_bytes", "seed", "device",
               "dtype", "b_dec_init", "b_dec_init_tokens", "prefetch_batches",
               "encoder_refit_max_tokens")  # the finish's passes are shared too


@dataclass
class LockstepMember:
    """One SAE of a pack trained on the same batches (see SaeTrainer.train_lockstep)."""

    sae: TopKSae
    config: SaeTrainingConfig
    callbacks: Sequence[Callback] = ()
    training_run_id: str | None = None
    save_dir: str | Path | None = None
    save: bool = True
    extra_meta: dict[str, Any] | None = None
    checkpoint_path: str | Path | None = None
    """A resumable checkpoint is written here (config.checkpoint_every, and when stopped) and
    resumed from when the file exists; it is removed once the run ends."""
    final_evaluators: Sequence[FinalEvaluator] = ()
    """Run once on the finished SAE; what they return goes to history.final_metrics and W&B."""


@dataclass
class MemberOutcome:
    """How one member of a pack ended: its history, the error that stopped it, or both (a run
    that trained but could not be saved where asked: SaveFailed)."""

    history: TrainingHistory | None
    error: Exception | None = None


class SaeTrainer:
    """Trains one TopKSae on one (activation run, layer) of a store."""

    def __init__(self, sae: TopKSae) -> None:
        self.sae = sae

    def train(
        self,
        store: LocalStore | str | Path,
        run_id: str,
        layer_signature: str,
        config: SaeTrainingConfig | None = None,
        callbacks: Iterable[Callback] = (),
        training_run_id: str | None = None,
        save_dir: str | Path | None = None,
        save: bool = True,
        extra_meta: dict[str, Any] | None = None,
    ) -> TrainingHistory:
        """Train, evaluate, save under `<store>/runs/<training_run_id>/` (or `save_dir`).

        Returns the history. Raises TrainingDiverged on a non-finite or exploding loss (nothing
        is saved for such a run) and StoreError on bad activation data. `extra_meta` (e.g. a
        sweep's sampled parameters) goes into meta.json and the W&B config.
        """
        member = LockstepMember(self.sae, config or SaeTrainingConfig(), tuple(callbacks),
                                training_run_id, save_dir, save, extra_meta)
        outcome = self.train_lockstep(store, run_id, layer_signature, [member])[0]
        if outcome.error is not None:
            raise outcome.error
        assert outcome.history is not None
        return outcome.history

    @staticmethod
    def train_lockstep(store: LocalStore | str | Path, run_id: str, layer_signature: str,
                       members: Sequence[LockstepMember],
                       stop: Callable[[], str | None] | None = None) -> list[MemberOutcome]:
        """Train several SAEs on the same batches: each batch is read and moved once for all.

        Members must agree on the data fields (DATA_FIELDS); everything else (size, k, lr, ...)
        may differ. Each member is evaluated, stopped by its callbacks, failed by divergence and
        saved on its own; a member that stops drops out of the pack and the rest go on.

        `stop` is polled after every batch: when it returns a reason, every active member with a
        checkpoint path writes its checkpoint and TrainingInterrupted is raised. A member whose
        checkpoint exists resumes from it: same weights, optimiser, schedule, dead-feature
        counters, history and data position (the batches before it are skipped).
        """
        if not members:
            return []
        store = store if isinstance(store, LocalStore) else LocalStore(store)
        first = members[0].config
        for m in members[1:]:
            for name in DATA_FIELDS:
                if getattr(m.config, name) != getattr(first, name):
                    raise ValueError(f"lockstep members disagree on {name}: "
                                     f"{getattr(first, name)!r} vs {getattr(m.config, name)!r}")
        source = store.open(run_id, layer_signature)
        for m in members:
            if source.d != m.sae.n_inputs:
                raise ValueError(f"activation run {run_id!r} layer {source.layer_signature!r} "
                                 f"has d={source.d}, but the SAE has n_inputs={m.sae.n_inputs}")
        device = _resolve_device(first.device, members[0].sae)
        if device.type == "cpu" and any(m.config.cpu_reuse_freed_memory for m in members):
            reuse_freed_blocks()
        dtype = getattr(torch, first.dtype) if first.dtype else members[0].sae.W_dec.dtype
        loader = ActivationLoader(source, first.loader_config(), device=device, dtype=dtype)
        eval_x = loader.eval_tokens()
        # the same sample and method for every member: compute b_dec's starting centre once
        center = (data_center(_first_tokens(loader, first.b_dec_init_tokens), first.b_dec_init)
                  if first.b_dec_init != "zeros" else None)
        total_steps = first.planned_steps(loader.batches_per_epoch)
        runs = [_Run(m, store, source, loader, eval_x, center, device, total_steps)
                for m in members]
        try:
            _drive(loader, runs, first, stop)
        except BaseException as e:  # an interrupt: close every W&B run as failed
            for run in runs:
                run.close_wandb(e)
            raise
        return [run.finish() for run in runs]


def _drive(loader: ActivationLoader, runs: list[_Run], cfg: SaeTrainingConfig,
           stop: Callable[[], str | None] | None = None) -> None:
    """Feed every batch to every active run; evaluate each on its own schedule. A run resumed
    from a checkpoint skips the batches before its position."""
    total = cfg.planned_steps(loader.batches_per_epoch)
    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    bar = tqdm(total=total, disable=not show, unit="step", dynamic_ncols=True)
    active = list(runs)
    first_epoch = min(run.position[0] for run in runs)  # whole epochs every run is past
    done = first_epoch * loader.batches_per_epoch
    bar.update(done)
    try:
        for epoch in range(first_epoch, cfg.epochs):
            for index, x in enumerate(loader.train_batches(epoch)):
                for run in list(active):
                    if (epoch, index) < run.position:
                        continue
                    if not run.guarded(run.step, x, epoch, index):
                        active.remove(run)
                bar.update(1)
                done += 1
                if active and len(runs) == 1:
                    bar.set_postfix_str(runs[0].postfix)
                reason = stop() if stop is not None else None
                if reason:
                    # a run still skipping to its resume position stays at that position
                    raise TrainingInterrupted(reason, {
                        str(run.checkpoint_path): run.checkpoint(
                            *max((epoch, index + 1), run.position))
                        for run in active if run.checkpoint_path is not None})
                if not active or done >= total:
                    break
            last = done >= total or epoch == cfg.epochs - 1
            if last:
                for run in list(active):  # a run that diverged since its last read stops here
                    if not run.guarded(run.losses.check):
                        active.remove(run)
                _refit(loader, [run for run in active if run.refits], total, stop)
            for run in list(active):
                if epoch < run.position[0]:
                    continue  # a resumed run already ended this epoch
                if not run.guarded(run.end_of_epoch, epoch, last):
                    active.remove(run)
            if not active or last:
                return
    finally:
        bar.close()


def _refit(loader: ActivationLoader, runs: list[_Run], total: int,
           stop: Callable[[], str | None] | None) -> None:
    """The least-squares finish after the last step, over the tokens trained on (the first
    `total` batches of epoch 0: the budget's tokens, or every training token once): the decoder
    refit; then, for the runs with `encoder_refit`, a step for the encoder and the decoder refit
    again. An interrupt checkpoints each run's trained state: the finish is redone on resume."""
    if not runs:
        return
    trained = {id(run): {k: v.clone() for k, v in run.sae.state_dict().items()}
               for run in runs if run.encoder_refits}

    def batches(limit: int) -> Iterator[torch.Tensor]:
        for index, x in enumerate(loader.train_batches(0)):
            yield x
            reason = stop() if stop is not None else None
            if reason:
                for run in runs:
                    if id(run) in trained:
                        run.sae.load_state_dict(trained[id(run)])
                raise TrainingInterrupted(reason, {
                    str(run.checkpoint_path): run.checkpoint(run.epoch, loader.batches_per_epoch)
                    for run in runs if run.checkpoint_path is not None})
            if index + 1 >= limit:
                break

    steps = min(total, loader.batches_per_epoch)
    _refit_decoders(runs, batches(steps))
    runs = [run for run in runs if run.encoder_refits and run.history.decoder_refit_tokens]
    if not runs:
        return
    cap = min(steps, math.ceil(runs[0].cfg.encoder_refit_max_tokens
                                     / loader.config.batch_size))
    refits = [EncoderRefit(run.sae) for run in runs]
    try:
        solve_encoder_refits(refits, lambda: batches(cap))
    except (FloatingPointError, RuntimeError) as e:  # e.g. out of memory: keep the decoder refit
        warnings.warn(f"encoder refit skipped ({_short(e)})", RuntimeWarning, stacklevel=2)
        return
    for run, refit in zip(runs, refits, strict=True):
        run.apply_encoder_refit(refit)
    _refit_decoders([run for run in runs if run.history.encoder_refit_tokens], batches(steps))


def _refit_decoders(runs: list[_Run], batches: Iterable[torch.Tensor]) -> None:
    """One pass over `batches` that refits each run's decoder."""
    refits = [DecoderRefit(run.sae.n_latents, run.sae.n_inputs, run.device) for run in runs]
    for x in batches:
        for run, refit in zip(runs, refits, strict=True):
            refit.observe(run.sae, x)
    for run, refit in zip(runs, refits, strict=True):
        run.apply_refit(refit)


class _Run:
    """One SAE's training state inside the shared loop."""

    def __init__(self, member: LockstepMember, store: LocalStore, source: Any,
                 loader: ActivationLoader, eval_x: torch.Tensor, b_dec_center: torch.Tensor | None,
                 device: torch.device, total_steps: int) -> None:
        self.member, self.sae = member, member.sae
        self.cfg = member.config.resolved_for(device, member.sae.n_latents,
                                              member.sae.n_inputs, total_steps)
        self.store, self.source, self.eval_x = store, source, eval_x
        cfg, sae = self.cfg, self.sae
        sae.to(device)
        sae.sparse_backward = cfg.sparse_backward
        self.device = device
        self.training_run_id = member.training_run_id or _new_run_id(
            source.run_id, source.layer_signature)
        self.out_dir = (Path(member.save_dir) if member.save_dir is not None
                        else store.run_dir(self.training_run_id))
        window = cfg.dead_window_tokens or min(DEFAULT_DEAD_WINDOW, loader.n_train_tokens)
        self.history = TrainingHistory(dead_window_tokens=window,
                                       n_train_tokens=loader.n_train_tokens,
                                       n_eval_tokens=int(eval_x.shape[0]))
        self.dead = DeadFeatureTracker(sae.n_latents, window, device)
        if b_dec_center is not None:
            with torch.no_grad():
                sae.b_dec.copy_(b_dec_center.to(sae.b_dec))
        self.opt = _adam(sae, cfg)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, cfg.lr_warmup_steps, total_steps,
                                          cfg.lr_decay_fraction))
        self.total_steps = total_steps
        self.refits = cfg.decoder_refit and sae.n_latents <= cfg.decoder_refit_max_latents
        """Whether this run refits its decoder once training ends."""
        self.encoder_refits = self.refits and cfg.encoder_refit and sae.activation == "topk"
        """Whether its encoder gets a least-squares step after the decoder refit."""
        self.step_count = 0
        self.epoch = 0
        self.losses = LossMonitor(cfg.divergence_factor, device)
        self.dead_now: DeadLatents | None = None
        """The dead latents as last read (AuxK's), refreshed every `host_sync_every` steps."""
        self.error: Exception | None = None
        self.postfix = ""
        self.checkpoint_path = (Path(member.checkpoint_path) if member.checkpoint_path
                                is not None else None)
        self.position = (0, 0)
        """(epoch, index of the next batch) this run trains from."""
        self.start = time.perf_counter()
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            self._resume(self.checkpoint_path)
        self.wandb = None
        if cfg.use_wandb:
            self.wandb = WandbRun(
                project=cfg.wandb_project, name=cfg.wandb_run_name or self.training_run_id,
                config={**cfg.to_dict(), **sae.config_dict(), "activation_run": source.run_id,
                        "layer_signature": source.layer_signature, "dead_window_tokens": window,
                        "n_train_tokens": loader.n_train_tokens, **(member.extra_meta or {})},
                mode=cfg.wandb_mode, dir=cfg.wandb_dir or self.out_dir, group=cfg.wandb_group,
                job_type=cfg.wandb_job_type)

    def guarded(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run a step or an evaluation; False once this run has stopped (pruned or failed)."""
        try:
            fn(*args)
            return True
        except StopTraining as stop:
            self.history.stop_reason = stop.reason
        except Exception as e:  # noqa: BLE001 - divergence or a bug ends this run, not the pack
            self.error = e
        return False

    def step(self, x: torch.Tensor, epoch: int, index: int = 0) -> None:
        sae, cfg = self.sae, self.cfg
        self.epoch = epoch
        read = self.step_count % cfg.host_sync_every == 0  # the only host reads of a step
        if cfg.auxk_alpha and (read or self.dead_now is None):
            self.dead_now = self.dead.read()
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=cfg.autocast_bf16):
            out = sae(x)
            loss = (out.reconstruction.float() - x).pow(2).mean()
            if cfg.l1_lambda:
                loss = loss + cfg.l1_lambda * sae.l1_penalty(out)
            if cfg.auxk_alpha:
                loss = loss + cfg.auxk_alpha * sae.auxk_loss(x, out, self.dead_now)
        self.losses.record(loss, self.step_count)
        if read:  # on CPU every step: a diverged step never updates the weights
            self.losses.check()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grads_()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        sae.normalize_decoder_()
        self.dead.update(out.top_indices, out.top_values)
        self.step_count += 1
        refit_next = self.refits and self.step_count >= self.total_steps
        if cfg.eval_every and self.step_count % cfg.eval_every == 0 and not refit_next:
            self.evaluate()  # (the last step's evaluation comes after the refit)
        if (self.checkpoint_path is not None and cfg.checkpoint_every
                and self.step_count % cfg.checkpoint_every == 0):
            self.losses.check()  # never checkpoint a diverged run
            self.checkpoint(epoch, index + 1)

    def checkpoint(self, epoch: int, next_index: int) -> int:
        """Write everything needed to go on from batch `next_index` of `epoch`, atomically;
        returns the step it holds."""
        assert self.checkpoint_path is not None
        write_torch(self.checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "step": self.step_count, "epoch": epoch,
            "next_index": next_index,
            "sae": self.sae.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "dead_tokens": self.dead.tokens,
            "dead_last_fired": self.dead.last_fired, **self.losses.state(),
            "history": {name: list(getattr(self.history, name)) for name in HISTORY_FIELDS},
            "elapsed_s": time.perf_counter() - self.start, "rng": torch.get_rng_state(),
        })
        return self.step_count

    def _resume(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        fmt = state.get("format") if isinstance(state, dict) else None
        if fmt != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: a checkpoint of format {fmt!r}; this saesweep reads format "
                             f"{CHECKPOINT_FORMAT}: delete it to train this run from the start")
        missing = [name for name in HISTORY_FIELDS if name not in state.get("history", {})]
        if missing:
            raise ValueError(f"{path}: the checkpoint's history has no {missing} (written by "
                             "another saesweep version): delete it to train this run from the "
                             "start")
        self.sae.load_state_dict(state["sae"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step_count, self.epoch = int(state["step"]), int(state["epoch"])
        self.position = (int(state["epoch"]), int(state["next_index"]))
        self.dead.tokens = int(state["dead_tokens"])
        self.dead.last_fired = state["dead_last_fired"].to(self.device)
        self.losses.load(state)
        for name in HISTORY_FIELDS:
            setattr(self.history, name, list(state["history"][name]))
        self.history.resumed_from_step = self.step_count
        self.start = time.perf_counter() - float(state["elapsed_s"])
        torch.set_rng_state(state["rng"].cpu())

    def discard_checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            self.checkpoint_path.unlink(missing_ok=True)

    def apply_refit(self, refit: DecoderRefit) -> None:
        try:
            self.history.decoder_refit_tokens = refit.apply_(self.sae)
        except (FloatingPointError, RuntimeError) as e:  # e.g. out of memory: keep Adam's
            warnings.warn(f"{self.training_run_id}: decoder refit skipped ({_short(e)}); the "
                          "decoder stays as trained", RuntimeWarning, stacklevel=2)

    def apply_encoder_refit(self, refit: EncoderRefit) -> None:
        try:
            self.history.encoder_refit_tokens = refit.apply_()
        except FloatingPointError as e:
            warnings.warn(f"{self.training_run_id}: encoder refit skipped ({_short(e)}); the "
                          "encoder stays as trained", RuntimeWarning, stacklevel=2)

    def end_of_epoch(self, epoch: int, last: bool) -> None:
        evaluated = bool(self.history.step) and self.history.step[-1] == self.step_count
        if (not self.cfg.eval_every or last) and not evaluated:
            self.evaluate()
        if last:
            self.evaluate_final()

    @torch.no_grad()
    def evaluate_final(self) -> None:
        """The member's final evaluators on the finished SAE, each timed."""
        for evaluator in self.member.final_evaluators:
            start = time.perf_counter()
            values = dict(evaluator(self.sae))
            name = getattr(evaluator, "__name__", type(evaluator).__name__)
            values[f"{name}_s"] = time.perf_counter() - start
            self.history.final_metrics.update(values)
        if self.wandb is not None and self.history.final_metrics:
            self.wandb.log(dict(self.history.final_metrics), step=self.step_count)

    @torch.no_grad()
    def evaluate(self) -> None:
        self.losses.check()  # a diverged run is never evaluated
        sae = self.sae
        acc = ReconstructionAccumulator()
        for start in range(0, self.eval_x.shape[0], self.cfg.batch_size):
            x = self.eval_x[start:start + self.cfg.batch_size]
            out = sae(x)
            acc.update(x, out.reconstruction, (out.top_values > 0).sum())
        m = acc.result()
        n_dead = self.dead.count()
        result = EvalResult(
            step=self.step_count, epoch=self.epoch, tokens=self.dead.tokens,
            loss=self.losses.take_mean(), r2=m.r2, fvu=m.fvu, mse=m.mse, l0=m.l0,
            dead_features=n_dead, dead_ratio=n_dead / sae.n_latents,
            lr=self.opt.param_groups[0]["lr"], elapsed_s=time.perf_counter() - self.start)
        self.history.append(result)
        self.postfix = f"r2={m.r2:.4f} l0={m.l0:.1f} dead={n_dead}"
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in dataclasses.asdict(result).items() if k != "step"},
                           step=self.step_count)
        for callback in self.member.callbacks:
            callback(result)  # may raise StopTraining

    def close_wandb(self, error: BaseException | None) -> None:
        if self.wandb is None:
            return
        if error is not None:
            self.wandb.set_summary({"status": "diverged" if isinstance(error, TrainingDiverged)
                                    else "failed", "error": str(error)})
            self.wandb.finish(exit_code=1)
        else:
            final = self.history.final
            self.wandb.set_summary({**(dataclasses.asdict(final) if final else {}),
                                    **self.history.final_metrics,
                                    "stop_reason": self.history.stop_reason,
                                    "status": "finished"})
            self.wandb.finish()
        self.wandb = None

    def finish(self) -> MemberOutcome:
        """Close W&B and save (nothing is saved for a run that failed); the run is over, so its
        checkpoint goes."""
        self.close_wandb(self.error)
        self.discard_checkpoint()
        if self.error is not None:
            return MemberOutcome(history=None, error=self.error)
        self.history.wall_time_s = time.perf_counter() - self.start
        if not self.member.save:
            return MemberOutcome(history=self.history)
        try:
            self._save(self.out_dir)
        except OSError as e:  # keep the trained weights somewhere and say where
            fallback = Path(tempfile.mkdtemp(prefix=f"saesweep-unsaved-{self.training_run_id}-"))
            try:
                self._save(fallback)
            except OSError:
                fallback = None  # type: ignore[assignment]
            return MemberOutcome(history=self.history, error=SaveFailed(self.out_dir, fallback, e))
        return MemberOutcome(history=self.history)

    def _save(self, folder: Path) -> None:
        self.history.run_dir = str(folder)
        _save_run(folder, self.sae, self.cfg, self.history, self.source, self.store,
                  self.training_run_id, self.member.extra_meta or {})


def _adam(sae: TopKSae, cfg: SaeTrainingConfig) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where this torch build supports it for these parameters; the
    decoder rows in their own group at `decoder_lr_scale` times the rate (group 0 is at `lr`)."""
    rest = [p for p in sae.parameters() if p is not sae.W_dec]
    params = [{"params": rest}, {"params": [sae.W_dec], "lr": cfg.lr * cfg.decoder_lr_scale}]
    try:
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)


def _resolve_device(name: str | None, sae: TopKSae) -> torch.device:
    if name is None:
        return sae.W_dec.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _first_tokens(loader: ActivationLoader, n: int) -> torch.Tensor:
    parts, have = [], 0
    for x in loader.train_batches(epoch=0):
        parts.append(x)
        have += x.shape[0]
        if have >= n:
            break
    return torch.cat(parts)[:n]


def _new_run_id(run_id: str, layer: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"sae_{run_id}_{flatten_layer_name(layer)}_{stamp}_{uuid.uuid4().hex[:6]}"


def _save_run(out_dir: Path, sae: TopKSae, cfg: SaeTrainingConfig, history: TrainingHistory,
              source: Any, store: LocalStore, training_run_id: str,
              extra_meta: dict[str, Any]) -> None:
    final = history.final
    sae.save(out_dir, metadata={"activation_run": source.run_id,
                                "layer_signature": source.layer_signature,
                                "model_id": source.model_id})
    write_json(out_dir / "training_config.json", cfg.to_dict())
    write_json(out_dir / "history.json", history.to_dict())
    write_json(out_dir / "meta.json", {
        "training_run_id": training_run_id,
        "activation_run": source.run_id,
        "layer_signature": source.layer_signature,
        "store": str(store.base_path),
        "store_layout": source.layout,
        "model_id": source.model_id,
        "seed": cfg.seed,
        "final": dataclasses.asdict(final) if final else None,
        "best_r2": max(history.r2) if history.r2 else None,
        "stop_reason": history.stop_reason,
        "dead_window_tokens": history.dead_window_tokens,
        "n_train_tokens": history.n_train_tokens,
        "n_eval_tokens": history.n_eval_tokens,
        "wall_time_s": history.wall_time_s,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__,
                     "python": platform.python_version(), "saesweep": saesweep_version()},
        **extra_meta,
    })

