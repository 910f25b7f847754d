"""What controls one training run: six groups of options, one flat face.

`SaeTrainingConfig` holds the groups (`data`, `optimiser`, `loss`, `finish`, `runtime`,
`logging`); every option is also read, written and given by its own name (`SaeTrainingConfig(
epochs=2, lr=1e-3)`, `cfg.lr`, a space's flat `training:`). Derived here from the groups:
`LOCKSTEP_FIELDS` (what SAEs trained on the same batches must agree on) and `NOT_SAMPLED` (what
belongs to the harness, not to a search).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.core.loader import ActivationLoader, LoaderConfig
from harness.core.recipes import default_lr
from harness.core.runtime.cpu_bf16 import cpu_has_bf16
from harness.core.store import FLOAT_DTYPES as STORE_DTYPES
from harness.core.store import ActivationSource
from harness.core.training.checks import check, check_types, positive

CUDA_HOST_SYNC_EVERY = 16  # steps between reads of the device (host_sync_every=None on CUDA)
DEFAULT_WARMUP_FRACTION = 0.1  # lr_warmup_steps=None: warm up over this share of the steps
# the activation dtypes a store may hold, by torch's names (float32, float16, bfloat16, float64)
FLOAT_DTYPES = tuple(str(d).removeprefix("torch.") for d in STORE_DTYPES.values())
_DEVICE_NAME = re.compile(r"^(cpu|mps|auto|cuda(:\d+)?)$")
_SHARED = {"lockstep": True}  # lockstep members read one batch stream: they must agree on this
_HARNESS = {"sampled": False}  # set by the harness (data section, CLI), never searched


@dataclass
class DataOptions:
    """Which tokens are trained and evaluated on, and how they are batched (shared by lockstep
    members: every field of this group)."""

    epochs: int = 1
    """Passes over the training split of the store."""
    batch_size: int = 4096
    """Tokens per optimisation step."""
    max_tokens: int | None = field(default=None, metadata=_HARNESS)
    """Use only the first `max_tokens` tokens of the store (held-out split included)."""
    max_train_tokens: int | None = None
    """Stop after this many training tokens in all (a token budget across epochs); None = every
    epoch in full."""
    holdout_fraction: float = 0.05
    """Fraction of the store held out for evaluation (never trained on)."""
    max_eval_tokens: int = 65536
    """Evaluate on at most this many held-out tokens (fewer where the memory plan caps them)."""
    shuffle_buffer_tokens: int = 1 << 20
    """Most tokens in the shuffle buffer of a streamed store (the memory plan may hold fewer)."""
    in_memory_bytes: int = 4 << 30
    """Hold the training split in memory when it fits in this many bytes and in the budget."""
    memory_budget: int | None = field(default=None, metadata=_HARNESS)
    """Host memory of the run in bytes, which sizes its buffers (harness.core.runtime.memory_plan);
    None = 80% of the available memory, divided among a sweep's workers on the node."""
    seed: int = 0
    """Seed of the data order (shard order and shuffles); the SAE's own init takes its seed."""
    prefetch_batches: int = 2
    """Batches a background thread prepares ahead of the step when training on a GPU; 0 =
    none."""
    b_dec_init: str = "geometric_median"
    """How b_dec starts: "geometric_median" (the paper), "mean" or "zeros"."""
    b_dec_init_tokens: int = 8192
    """Training tokens used to initialise b_dec."""

    def __post_init__(self) -> None:
        check_types(self)
        positive(self, "epochs", "batch_size", "max_eval_tokens", "shuffle_buffer_tokens",
                  "b_dec_init_tokens")
        positive(self, "max_tokens", "max_train_tokens", "memory_budget", optional=True)
        check(0 < self.holdout_fraction < 1, "holdout_fraction", "in (0, 1)",
               self.holdout_fraction)
        check(self.b_dec_init in ("geometric_median", "mean", "zeros"), "b_dec_init",
               "geometric_median, mean or zeros", self.b_dec_init)


@dataclass
class OptimiserOptions:
    """Adam and its learning-rate schedule."""

    lr: float | None = None
    """Adam learning rate (after warm-up); None = harness.core.recipes.default_lr (fitted)."""
    decoder_lr_scale: float = 4.0
    """The decoder rows' learning rate as a multiple of `lr` (a faster decoder gives the encoder
    better gradients: docs/experiments.md); 1 = one rate for all."""
    lr_warmup_steps: int | None = None
    """Linear learning-rate warm-up from 0 over this many steps; None = a tenth of the planned
    steps (without it the first large steps kill latents at high learning rates:
    docs/experiments.md)."""
    lr_decay_fraction: float = 0.0
    """Decay the learning rate linearly to 0 over this last fraction of the planned steps
    (dictionary_learning's schedule); 0 keeps it constant."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value; None or 0 = no clipping."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas."""
    adam_eps: float = 6.25e-10
    """Adam's epsilon (the paper's value)."""
    weight_average_fraction: float = 0.08
    """The SAE ends as an exponential moving average of its weights over about this share of the
    planned steps (beta = 1 - 1 / (share x steps): docs/training.md); 0 = the last step's."""

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]  # YAML gives lists
        check_types(self)
        positive(self, "lr", optional=True)
        positive(self, "decoder_lr_scale")
        for name in ("lr_warmup_steps", "lr_decay_fraction"):
            value = getattr(self, name)
            check(value is None or value >= 0, name, ">= 0", value)
        check(self.lr_decay_fraction <= 1, "lr_decay_fraction", "in [0, 1]",
               self.lr_decay_fraction)
        check(0 <= self.weight_average_fraction <= 1, "weight_average_fraction", "in [0, 1]",
              self.weight_average_fraction)


@dataclass
class LossOptions:
    """The training loss and what ends a run as diverged."""

    l1_lambda: float = 0.0
    """Weight of the decoder-norm weighted L1 penalty: loss = var x (FVU + l1_lambda x L1/std)."""
    l0_lambda: float = 0.0
    """Weight of JumpReLU's L0 penalty, the FVU one active latent must save: var x l0_lambda."""
    sparsity_warmup_fraction: float = 0.05
    """The L1 and L0 penalties grow linearly from 0 over this share of the planned steps
    (SAELens' l1_warm_up_steps, dictionary_learning's sparsity_warmup_steps); 0 = none."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss on dead latents (the paper's 1/32); 0 turns it off."""
    dead_window_tokens: int | None = None
    """A latent is dead if it did not fire in this many training tokens; None = min(10M, one
    epoch of training tokens)."""
    divergence_factor: float = 1e4
    """Also stop as diverged when the loss exceeds this factor times the first step's loss."""

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("l1_lambda", "l0_lambda", "auxk_alpha"):
            check(getattr(self, name) >= 0, name, ">= 0", getattr(self, name))
        check(0 <= self.sparsity_warmup_fraction <= 1, "sparsity_warmup_fraction", "in [0, 1]",
              self.sparsity_warmup_fraction)
        positive(self, "dead_window_tokens", optional=True)
        positive(self, "divergence_factor")


@dataclass
class FinishOptions:
    """The least-squares finish after the last step (harness.core.training.finish)."""

    decoder_refit: bool = True
    """After the last step, replace the decoder rows and output bias by their least-squares fit
    to the codes of a sample of the tokens trained on, pulled towards Adam's rows
    (`decoder_prior_tokens`; harness.core.training.refit); False = the decoder as Adam left it."""
    finish_budget: float = 0.12
    """The finish's cost as a share of the training loop's, by the cost model of
    harness.core.training.finish (a pass over a batch and the solve, counted in training steps):
    it sets how many tokens the finish reads; where the solve alone does not fit, there is no
    finish."""
    finish_tokens: int | None = None
    """Tokens the finish reads (whole batches, the first of the first epoch, at most those trained
    on); None = as many as `finish_budget` allows."""
    decoder_prior_tokens: int = 16384
    """Adam's decoder counts as this many tokens of evidence in the refit: a ridge towards each
    trained row, weighted by the latent's activations; 0 = the plain least-squares fit."""
    encoder_refit: bool = False
    """After the decoder refit, a Gauss-Newton step for the encoder rows, then the decoder refit
    again (harness.core.training.encoder_refit: 6 more passes over at most
    `encoder_refit_max_tokens`; for activations that support it, only with the decoder refit)."""
    encoder_refit_max_tokens: int = field(default=1 << 20, metadata=_SHARED)
    """Tokens the encoder refit fits on (the first of the decoder refit's); each keeps its k
    latent indices on the device (int32) between the passes."""
    decoder_refit_max_latents: int = 16384
    """Skip the refit above this many latents: its [n+1, n+1] system takes 4(n+1)^2 bytes (1 GiB
    at 16384) on the device, and twice that in float64 for the solve."""

    def __post_init__(self) -> None:
        check_types(self)
        positive(self, "encoder_refit_max_tokens", "decoder_refit_max_latents")
        positive(self, "finish_tokens", optional=True)
        for name in ("finish_budget", "decoder_prior_tokens"):
            check(getattr(self, name) >= 0, name, ">= 0", getattr(self, name))


@dataclass
class RuntimeOptions:
    """Where and how the steps run, and when they are evaluated and checkpointed."""

    device: str | None = field(default=None, metadata={**_SHARED, **_HARNESS})
    """Device to train on ("cpu", "cuda", "cuda:1", "auto"); None keeps the SAE's device."""
    dtype: str | None = field(default=None, metadata=_SHARED)
    """Dtype of the activations fed to the SAE; None = the SAE's parameter dtype."""
    eval_every: int = 0
    """Evaluate every this many steps; 0 evaluates once at the end of each epoch."""
    checkpoint_every: int = 0
    """With a checkpoint path (LockstepMember.checkpoint_path), write a resumable checkpoint
    every this many steps, as well as when training is stopped; 0 = only when stopped."""
    sparse_backward: bool = True
    """Backward through the chosen latents only (B*k*d work, not B*n*d); False = the dense
    autograd reference."""
    autocast_bf16: bool | None = None
    """The forward pass (and the finish's encoder products) under bf16 autocast, fp32 master
    weights; None = on CUDA (as sparsify and SAELens train) and on a CPU with native bf16
    products (harness.core.runtime.cpu_bf16), not where bf16 is emulated and slower."""
    host_sync_every: int | None = None
    """Steps between the trainer's reads of device state: the divergence check and the dead
    latents AuxK trains (a divergence is caught at most this many steps late, a latent joins
    or leaves AuxK as late); None = every step on CPU, where a read costs nothing, 16 on
    CUDA."""
    cpu_reuse_freed_memory: bool = True
    """On CPU with glibc, keep freed blocks up to the step's [B, n] size for the next step where
    the memory budget holds them (harness.core.runtime.cpu_memory). Process-wide, kept once set."""
    progress: bool | None = field(default=None, metadata=_HARNESS)
    """Show a tqdm bar; None = only when stderr is a terminal."""

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("eval_every", "checkpoint_every"):
            check(getattr(self, name) >= 0, name, ">= 0", getattr(self, name))
        if self.host_sync_every is not None and self.host_sync_every <= 0:
            raise ValueError("SaeTrainingConfig.host_sync_every must be > 0 or None, got "
                             f"{self.host_sync_every}")
        check(self.dtype is None or self.dtype in FLOAT_DTYPES, "dtype",
               f"one of {list(FLOAT_DTYPES)} or None", self.dtype)
        check(self.device is None or bool(_DEVICE_NAME.match(str(self.device))), "device",
               "cpu, cuda, cuda:N, mps, auto or None", self.device)


@dataclass
class LoggingOptions:
    """Weights & Biases (every field belongs to the harness, none is searched)."""

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

    def __post_init__(self) -> None:
        check_types(self)


GROUPS: dict[str, type] = {"data": DataOptions, "optimiser": OptimiserOptions,
                           "loss": LossOptions, "finish": FinishOptions,
                           "runtime": RuntimeOptions, "logging": LoggingOptions}
"""Group name -> its dataclass, in the order the flat options are listed."""
FIELDS: dict[str, dataclasses.Field] = {
    f.name: f for cls in GROUPS.values() for f in dataclasses.fields(cls)}
"""Every option by its flat name."""
OWNER: dict[str, str] = {f.name: group for group, cls in GROUPS.items()
                         for f in dataclasses.fields(cls)}
"""Flat option name -> the group that holds it."""
LOCKSTEP_FIELDS = tuple(name for name, f in FIELDS.items()
                        if OWNER[name] == "data" or f.metadata.get("lockstep"))
"""What SAEs trained on the same batches must agree on: the data group and the marked fields."""
NOT_SAMPLED = frozenset(name for name, f in FIELDS.items()
                        if OWNER[name] == "logging" or f.metadata.get("sampled") is False)
"""Options that belong to the harness, not to a search."""


def option_types() -> dict[str, Any]:
    """Flat option name -> its type (resolved annotations of the groups)."""
    hints: dict[str, Any] = {}
    for cls in GROUPS.values():
        hints.update(typing.get_type_hints(cls))
    return hints


@dataclass(init=False)
class SaeTrainingConfig:
    """Everything that controls one SAE training run: six groups, each option also by its flat
    name (`SaeTrainingConfig(lr=1e-3)`, `cfg.lr`, `cfg.lr = 2e-3`)."""

    data: DataOptions
    """Tokens, split and batches."""
    optimiser: OptimiserOptions
    """Adam and the learning-rate schedule."""
    loss: LossOptions
    """The loss and divergence."""
    finish: FinishOptions
    """The least-squares finish."""
    runtime: RuntimeOptions
    """Device, precision, evaluation and checkpoint cadence."""
    logging: LoggingOptions
    """Weights & Biases."""

    def __init__(self, data: DataOptions | Mapping[str, Any] | None = None,
                 optimiser: OptimiserOptions | Mapping[str, Any] | None = None,
                 loss: LossOptions | Mapping[str, Any] | None = None,
                 finish: FinishOptions | Mapping[str, Any] | None = None,
                 runtime: RuntimeOptions | Mapping[str, Any] | None = None,
                 logging: LoggingOptions | Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        unknown = sorted(set(options) - set(OWNER))
        if unknown:
            raise TypeError(f"SaeTrainingConfig got unknown option(s) {unknown}; known: "
                            f"{list(OWNER)}")
        given = {"data": data, "optimiser": optimiser, "loss": loss, "finish": finish,
                 "runtime": runtime, "logging": logging}
        for name, cls in GROUPS.items():
            base = given[name]
            values = dict(base) if isinstance(base, Mapping) else {}
            values.update({k: v for k, v in options.items() if OWNER[k] == name})
            group = (dataclasses.replace(base, **values) if isinstance(base, cls)
                     else cls(**values))
            object.__setattr__(self, name, group)

    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails
        owner = OWNER.get(name)
        if owner is None or owner not in self.__dict__:
            raise AttributeError(f"SaeTrainingConfig has no option {name!r}")
        return getattr(self.__dict__[owner], name)

    def __setattr__(self, name: str, value: Any) -> None:
        owner = OWNER.get(name)
        if owner is None:
            object.__setattr__(self, name, value)
        else:
            setattr(self.__dict__[owner], name, value)

    @classmethod
    def field_names(cls) -> list[str]:
        """Every option by its flat name."""
        return list(OWNER)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> SaeTrainingConfig:
        """Build from flat options and/or group mappings; an unknown key is an error naming it."""
        unknown = sorted(set(values) - set(OWNER) - set(GROUPS))
        if unknown:
            raise ValueError(f"{where}: unknown SaeTrainingConfig field(s) {unknown}; known: "
                             f"{cls.field_names()}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every option by its flat name (training_config.json, the W&B config)."""
        return {name: getattr(self, name) for name in OWNER}

    def replace(self, **options: Any) -> SaeTrainingConfig:
        """A copy with these options changed (validated again)."""
        return SaeTrainingConfig(**{g: getattr(self, g) for g in GROUPS}, **options)

    def loader_config(self) -> LoaderConfig:
        """How this run's tokens are split, shuffled and batched."""
        d = self.data
        return LoaderConfig(
            batch_size=d.batch_size, holdout_fraction=d.holdout_fraction,
            max_tokens=d.max_tokens, max_eval_tokens=d.max_eval_tokens,
            shuffle_buffer_tokens=d.shuffle_buffer_tokens, in_memory_bytes=d.in_memory_bytes,
            seed=d.seed, prefetch_batches=d.prefetch_batches)

    def planned_tokens(self, n_train_tokens: int) -> int:
        """Tokens the planned steps read (a cap trains whole batches: 3,000 at 256 is 3,072)."""
        per_epoch = math.ceil(n_train_tokens / self.batch_size)
        epochs, steps = divmod(self.planned_steps(per_epoch), per_epoch)
        return epochs * n_train_tokens + steps * self.batch_size

    def planned_steps(self, batches_per_epoch: int) -> int:
        """Optimisation steps this config runs in full: every epoch, capped by the budget."""
        steps = self.epochs * batches_per_epoch
        if self.max_train_tokens is not None:
            steps = min(steps, math.ceil(self.max_train_tokens / self.batch_size))
        return steps

    def steps_on(self, source: ActivationSource) -> int:
        """The planned steps on an activation source (its split is arithmetic: nothing read)."""
        return self.planned_steps(ActivationLoader(source, self.loader_config()).batches_per_epoch)

    def resolved_lr(self, n_latents: int, d: int, steps: int, spread: float | None = None) -> float:
        """`lr`, or the default rate of this size, steps, batch and participation ratio."""
        lr = self.lr
        return lr if lr is not None else default_lr(n_latents, d, steps, self.batch_size, spread)

    def resolved_for(self, device: torch.device, n_latents: int, d: int,
                     steps: int, spread: float | None = None) -> SaeTrainingConfig:
        """This config with every None that depends on the run filled in: what it trains with
        (and what is saved with the SAE)."""
        cuda = device.type == "cuda"
        return self.replace(
            lr=self.resolved_lr(n_latents, d, steps, spread),
            lr_warmup_steps=(self.lr_warmup_steps if self.lr_warmup_steps is not None
                             else round(DEFAULT_WARMUP_FRACTION * steps)),
            autocast_bf16=((cuda or (device.type == "cpu" and cpu_has_bf16()))
                           if self.autocast_bf16 is None else self.autocast_bf16),
            host_sync_every=self.host_sync_every or (CUDA_HOST_SYNC_EVERY if cuda else 1))
