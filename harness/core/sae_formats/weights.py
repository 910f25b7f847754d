"""Exact rewrites of an SAE's weights that leave its forward pass unchanged (up to rounding; they
are computed in float64 and cast back).

Every SAE here is read into one forward pass: pre = (x - b_dec) @ W_enc + b_enc, the activation
chooses and keeps latents from relu(pre) (TopK by pre, a threshold per latent, ...), and
x_hat = acts @ W_dec + b_dec.
"""

from __future__ import annotations

import torch

Weights = dict[str, torch.Tensor]


def _f64(weights: Weights) -> Weights:
    return {key: value.to(torch.float64) for key, value in weights.items()}


def _like(new: Weights, old: Weights) -> Weights:
    return {key: value.to(old[key].dtype) if key in old else value for key, value in new.items()}


def fold_input_bias(weights: Weights) -> Weights:
    """A tool that does not subtract b_dec from the input (SAELens `apply_b_dec_to_input:
    false`, dictionary_learning's JumpReLU): pre = x @ W_enc + b_enc = (x - b_dec) @ W_enc +
    (b_enc + b_dec @ W_enc)."""
    w = _f64(weights)
    w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    return _like(w, weights)


def scale_latents(weights: Weights, scale: torch.Tensor, thresholds: tuple[str, ...] = ()
                  ) -> Weights:
    """Latent i's pre-activation times scale_i > 0 and its decoder row divided by it, so
    acts @ W_dec is unchanged for activations that scale with their pre-activation (ReLU and
    thresholds in `thresholds` scaled alike). Two uses:

    - SAELens' `rescale_acts_by_decoder_norm` (select on pre * ||W_dec_i||, decode with the
      rows divided by their norms) is this with scale = the row norms and thresholds left as
      they are (they already compare against the rescaled pre-activation);
    - decoder rows of unit norm (`harness.export`) are this with scale = the row norms and every
      threshold scaled too.
    """
    w = _f64(weights)
    s = scale.to(torch.float64)
    w["W_enc"] = w["W_enc"] * s[None, :]
    w["b_enc"] = w["b_enc"] * s
    w["W_dec"] = w["W_dec"] / s[:, None]
    for key in thresholds:
        w[key] = w[key] * s
    return _like(w, weights)


def decoder_norms(weights: Weights) -> torch.Tensor:
    """Each decoder row's norm (a zero row counts as 1: its latent decodes to nothing)."""
    norms = weights["W_dec"].to(torch.float64).norm(dim=1)
    return torch.where(norms > 0, norms, torch.ones_like(norms))
