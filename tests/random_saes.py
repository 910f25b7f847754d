"""Test helper: SAEs with every tensor non-trivial, for round trips of their folders."""

from __future__ import annotations

import torch

from harness import TopKSae

D, N, K = 16, 48, 4


def random_sae(activation: str, k: int | None, seed: int = 0) -> TopKSae:
    """An SAE with every tensor non-trivial: biases, decoder rows of unequal norms, thresholds."""
    sae = TopKSae(N, D, k, activation=activation, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(N, generator=gen) * 0.5)
        sae.b_dec.copy_(torch.randn(D, generator=gen))
        sae.W_dec.mul_(torch.rand(N, 1, generator=gen) + 0.5)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.4)
        if hasattr(sae, "log_threshold"):
            sae.log_threshold.copy_((torch.rand(N, generator=gen) * 0.8 + 0.05).log())
    return sae
