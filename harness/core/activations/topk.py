"""TopK (Gao et al. 2024): each token keeps its k largest pre-activations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from harness.core.sae import TopKSae


class TopK:
    """Exactly k candidates per token, all kept (ReLU zeros included)."""

    name: ClassVar[str] = "topk"
    params: ClassVar[frozenset[str]] = frozenset({"k"})
    supports_encoder_refit: ClassVar[bool] = True

    def attach(self, sae: TopKSae) -> None:
        pass

    def candidates(self, k: int, n_latents: int) -> int:
        return k

    def select(self, sae: TopKSae, values: torch.Tensor) -> torch.Tensor:
        return values

    def tensors(self, sae: TopKSae) -> dict[str, torch.Tensor]:
        return {}

    def config(self, sae: TopKSae) -> dict[str, Any]:
        return {}
