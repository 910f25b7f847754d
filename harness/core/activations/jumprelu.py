"""JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead"; SAELens' "jumprelu" architecture).

A latent is active where its pre-activation z exceeds its own learned threshold theta, and then
passes z unchanged: z * H(z - theta). The step has no useful gradient, so theta learns from
straight-through estimators with a rectangle kernel of width epsilon (the paper's pseudo-
derivatives):

    d/dtheta [z H(z - theta)] ~ -(theta / epsilon) rect((z - theta) / epsilon)
    d/dtheta  H(z - theta)    ~ -(1 / epsilon)     rect((z - theta) / epsilon)

and the training loss adds `l0_lambda` times the mean number of active latents per token, counted
with that step (the L0 penalty, warmed up like the L1 penalty). Thresholds are kept as
`log_threshold` (Adam then moves them by ratios) and saved as SAELens' `threshold`. Bandwidth
and initial threshold are options in units of the data's per-element standard deviation, so one
setting serves stores of any scale. Only the latents above theta - epsilon / 2 have a gradient, so
the step gathers those (a sparse backward) while they are under an eighth of the dictionary.
Anthropic's 2025 variant (a tanh penalty and a pre-activation loss) is not implemented.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from harness.core.activations.base import ActivationBase, width_above

if TYPE_CHECKING:
    from harness.core.sae import SaeOutput, SparseAutoencoder


def _window(z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    # z comes after the SAE's ReLU: a zero there is a negative pre-activation, never in the
    # window (else a threshold under bandwidth / 2 would count every silent latent)
    return (((z - theta).abs() < bandwidth / 2) & (z > 0)).to(z.dtype)


class JumpReluFunction(torch.autograd.Function):
    """z * H(z - theta): gradient H(z - theta) for z, the straight-through estimate for theta."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, theta: torch.Tensor,  # noqa: ANN001
                bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        z, theta = ctx.saved_tensors
        grad_theta = -(theta / ctx.bandwidth) * _window(z, theta, ctx.bandwidth) * grad
        return (z > theta) * grad, grad_theta, None


class StepFunction(torch.autograd.Function):
    """H(z - theta): no gradient for z, the straight-through estimate for theta."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, theta: torch.Tensor,  # noqa: ANN001
                bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        z, theta = ctx.saved_tensors
        grad_theta = -(1 / ctx.bandwidth) * _window(z, theta, ctx.bandwidth) * grad
        return torch.zeros_like(z), grad_theta, None


class JumpRelu(ActivationBase):
    """Per-latent learned thresholds; sparsity from the L0 penalty."""

    name: ClassVar[str] = "jumprelu"
    params: ClassVar[frozenset[str]] = frozenset({"l0_lambda"})
    options: ClassVar[dict[str, Any]] = {"jumprelu_bandwidth": 0.05,
                                         "jumprelu_init_threshold": 1.5,
                                         "jumprelu_threshold_lr_scale": 10.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for key in self.options:
            if not float(getattr(self, key)) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")
        self.scale = 1.0
        """The data's per-element standard deviation (begin_training), the options' unit."""

    @property
    def bandwidth(self) -> float:
        """epsilon in the data's units."""
        return float(self.jumprelu_bandwidth) * self.scale

    def attach(self, sae: SparseAutoencoder) -> None:
        sae.log_threshold = nn.Parameter(torch.zeros(sae.n_latents, device=sae.W_dec.device,
                                                     dtype=sae.W_dec.dtype))

    def begin_training(self, sae: SparseAutoencoder, scale: float) -> None:
        self.scale = float(scale) if scale > 0 else 1.0
        with torch.no_grad():
            sae.log_threshold.fill_(math.log(float(self.jumprelu_init_threshold) * self.scale))

    def lr_scales(self, sae: SparseAutoencoder) -> list[tuple[torch.nn.Parameter, float]]:
        return [(sae.log_threshold, float(self.jumprelu_threshold_lr_scale))]

    def candidates(self, k: int | None, n_latents: int) -> int:
        return n_latents

    def ranking(self, sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
        theta = sae.log_threshold.detach().exp()
        # training also gathers the latents just below theta: their thresholds have a gradient
        cut = theta - self.bandwidth / 2 if torch.is_grad_enabled() else theta
        return pre - cut.to(pre.dtype)

    def width(self, sae: SparseAutoencoder, pre: torch.Tensor) -> int | None:
        return width_above(self.ranking(sae, pre), 0.0)

    def select(self, sae: SparseAutoencoder, values: torch.Tensor,
               indices: torch.Tensor) -> torch.Tensor:
        theta = sae.log_threshold.exp()[indices].to(values.dtype)
        if not torch.is_grad_enabled():
            return values * (values > theta)
        return JumpReluFunction.apply(values, theta, self.bandwidth)

    def l0_penalty(self, sae: SparseAutoencoder, out: SaeOutput) -> torch.Tensor:
        theta = sae.log_threshold.exp()[out.top_indices]
        z = out.candidate_values.float()
        return StepFunction.apply(z, theta, self.bandwidth).sum(-1).mean()

    def tensors(self, sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
        return {"threshold": sae.log_threshold.detach().exp()}

    def restore(self, sae: SparseAutoencoder, saved: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            sae.log_threshold.copy_(saved["threshold"].log())
