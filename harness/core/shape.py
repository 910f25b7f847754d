"""An SAE's size from a space's parameters: n_latents from the expansion, k from k or
k_fraction, and the one bound on k. The space's checks, each trial's setup, the packing
estimate and the SAE itself all resolve and check it here."""

from __future__ import annotations


def n_latents_for(expansion: float, d: int) -> int:
    """Latents of an SAE of `expansion` x `d`."""
    return max(1, round(expansion * d))


def k_for(n_latents: int, k: float | None = None, k_fraction: float | None = None) -> int:
    """k given directly, or as the fraction `k_fraction` of `n_latents` (rounded, at least 1)."""
    if k is not None:
        return int(k)
    if k_fraction is None:
        raise ValueError("k or k_fraction is needed")
    return max(1, round(k_fraction * n_latents))


def k_problem(k: int, n_latents: int) -> str | None:
    """Why `k` cannot go with `n_latents` (the one bound: 1 <= k < n_latents; a k that keeps
    every latent is no sparse code), or None."""
    if not 0 < k < n_latents:
        return f"k must be in [1, n_latents={n_latents}), got k={k}"
    return None
