"""BatchTopK (Bussmann et al. 2024): the top k*B pre-activations of a whole batch.

L0 is k on average but varies per token. Each token's candidates are its top 4k pre-activations
(CANDIDATES), which bounds a token's L0 and keeps the sparse backward. Training (a forward with
gradients) updates `threshold`, an exponential average of each batch's cut value; inference (no
gradients) keeps the candidates above it, as the paper does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from harness.core.activations.base import ActivationBase

if TYPE_CHECKING:
    from harness.core.sae import TopKSae

CANDIDATES = 4  # a BatchTopK token keeps at most this many times k latents
THRESHOLD_EMA = 0.1  # weight of the newest batch's cut in the inference threshold


class BatchTopK(ActivationBase):
    """k*B winners per batch among each token's top 4k; a learned threshold at inference."""

    name: ClassVar[str] = "batchtopk"

    def attach(self, sae: TopKSae) -> None:
        # a buffer, so .to() and state_dict carry it
        sae.register_buffer("threshold", torch.zeros((), device=sae.W_dec.device,
                                                     dtype=sae.W_dec.dtype))
        self.updates = 0

    def candidates(self, k: int | None, n_latents: int) -> int:
        return min(n_latents, CANDIDATES * int(k or n_latents))

    def select(self, sae: TopKSae, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return values * (values > sae.threshold)
        with torch.no_grad():
            flat = values.detach().flatten()
            cut = flat.topk(min(flat.numel(), sae.k * values.shape[0]), sorted=False).values.min()
            if cut > 0:  # a non-positive cut would let ReLU zeros through: no information
                self.updates += 1
                sae.threshold.lerp_(cut.to(sae.threshold), max(THRESHOLD_EMA, 1 / self.updates))
        return values * (values >= cut)

    def tensors(self, sae: TopKSae) -> dict[str, torch.Tensor]:
        return {"threshold": sae.threshold}

    def config(self, sae: TopKSae) -> dict[str, Any]:
        return {**super().config(sae), "threshold": float(sae.threshold)}
