"""BatchTopK (Bussmann et al. 2024): the top k*B pre-activations of a whole batch.

L0 is k on average but varies per token. While training, each token's candidates are its top 4k
pre-activations (CANDIDATES), which bounds a token's L0 and keeps the sparse backward, and each
batch updates `threshold`, an exponential average of the batch's cut value. Inference (no
gradients) keeps every latent above the threshold, with no cap, as the paper, SAELens and
dictionary_learning do: the SAE is then a JumpReLU with one threshold for every latent, which is
how it is saved (SAELens' inference form: `jumprelu`, a [d_sae] threshold).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from harness.core.activations.base import ActivationBase, width_above

if TYPE_CHECKING:
    from harness.core.sae import SparseAutoencoder

CANDIDATES = 4  # a BatchTopK token keeps at most this many times k latents
THRESHOLD_EMA = 0.1  # weight of the newest batch's cut in the inference threshold


class BatchTopK(ActivationBase):
    """k*B winners per batch among each token's top 4k; a learned threshold at inference."""

    name: ClassVar[str] = "batchtopk"
    saelens_name: ClassVar[str] = "jumprelu"

    def attach(self, sae: SparseAutoencoder) -> None:
        # a buffer, so .to() and state_dict carry it
        sae.register_buffer("threshold", torch.zeros((), device=sae.W_dec.device,
                                                     dtype=sae.W_dec.dtype))
        self.updates = 0

    def candidates(self, k: int | None, n_latents: int) -> int:
        return min(n_latents, CANDIDATES * int(k or n_latents))

    def width(self, sae: SparseAutoencoder, pre: torch.Tensor) -> int | None:
        if torch.is_grad_enabled():
            return self.candidates(sae.k, sae.n_latents)
        return width_above(pre, sae.threshold)  # inference: every latent above the threshold

    def select(self, sae: SparseAutoencoder, values: torch.Tensor,
               indices: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return values * (values > sae.threshold)
        with torch.no_grad():
            flat = values.detach().flatten()
            cut = flat.topk(min(flat.numel(), sae.k * values.shape[0]), sorted=False).values.min()
            if cut > 0:  # a non-positive cut would let ReLU zeros through: no information
                self.updates += 1
                sae.threshold.lerp_(cut.to(sae.threshold), max(THRESHOLD_EMA, 1 / self.updates))
        return values * (values >= cut)

    def tensors(self, sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
        # a threshold per latent (all equal): SAELens' JumpReLU reads exactly this
        return {"threshold": sae.threshold.detach().expand(sae.n_latents).contiguous()}

    def restore(self, sae: SparseAutoencoder, saved: dict[str, torch.Tensor]) -> None:
        threshold = saved["threshold"].flatten()
        if threshold.numel() and not bool((threshold == threshold[0]).all()):
            raise ValueError("a BatchTopK threshold is one value for every latent; these "
                             "differ: read the folder as a JumpReLU SAE")
        with torch.no_grad():
            sae.threshold.copy_(threshold[0] if threshold.numel() else threshold.new_zeros(()))

    def config(self, sae: SparseAutoencoder) -> dict[str, Any]:
        return {**super().config(sae), "threshold": float(sae.threshold)}
