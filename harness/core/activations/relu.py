"""ReLU + L1, the classic SAE (Bricken et al. 2023; SAELens' "standard" architecture).

Every latent with a positive pre-activation is active, and the training loss's decoder-norm
weighted L1 penalty (`l1_lambda`, warmed up over `sparsity_warmup_fraction` of the steps as in
SAELens and dictionary_learning) sets how many: L0 comes out of training. While fewer than an
eighth of the latents fire per token (base.DENSE_SHARE), the step gathers the positive ones (a
sparse backward); above that it runs dense.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from harness.core.activations.base import ActivationBase, width_above

if TYPE_CHECKING:
    from harness.core.sae import SparseAutoencoder


class Relu(ActivationBase):
    """All positive pre-activations; sparsity from the L1 penalty."""

    name: ClassVar[str] = "relu"
    saelens_name: ClassVar[str] = "standard"
    params: ClassVar[frozenset[str]] = frozenset({"l1_lambda"})

    def candidates(self, k: int | None, n_latents: int) -> int:
        return n_latents

    def width(self, sae: SparseAutoencoder, pre: torch.Tensor) -> int | None:
        return width_above(pre, 0.0)
