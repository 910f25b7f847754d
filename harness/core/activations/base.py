"""The SAE-activation protocol: what an activation function owns.

An activation decides which latents of a token are active, given the encoder's pre-activations.
The SAE gathers each token's top `candidates(k, n)` pre-activations (on the sparse path it
backpropagates through those only), applies ReLU, and asks the activation which of them to keep
(`select`). Whatever state the activation learns (BatchTopK's inference threshold) it registers
on the SAE in `attach`, saves in `tensors` and describes in `config`, so that one SAE class and
one trainer serve every activation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from harness.core.sae import TopKSae


class Activation(Protocol):
    """One activation function (see the module docstring)."""

    name: ClassVar[str]
    """Its registry name: `activation:` in a space, `architecture` in cfg.json."""
    params: ClassVar[frozenset[str]]
    """The sampled SAE parameters it needs (a space must give them)."""
    supports_encoder_refit: ClassVar[bool]
    """Whether the encoder refit's model (each token's fixed top-k set) describes it."""

    def attach(self, sae: TopKSae) -> None:
        """Register its parameters or buffers on `sae` (before the SAE moves or loads)."""

    def candidates(self, k: int, n_latents: int) -> int:
        """Latents per token the forward gathers, and that memory estimates count."""

    def select(self, sae: TopKSae, values: torch.Tensor) -> torch.Tensor:
        """The activations to keep among a batch's candidates [B, m] (after ReLU); zero the
        rest. Called with gradients while training, without at inference."""

    def tensors(self, sae: TopKSae) -> dict[str, torch.Tensor]:
        """Its saved tensors, by their name in sae_weights.safetensors."""

    def config(self, sae: TopKSae) -> dict[str, Any]:
        """Its fields in cfg.json."""
