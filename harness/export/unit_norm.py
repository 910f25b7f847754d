"""Decoder rows of unit norm with the same reconstructions (`unit_norm_decoder`; the reasons
and the exact cases: harness.export)."""

from __future__ import annotations

import torch

from harness.core.sae import SparseAutoencoder
from harness.core.sae_formats import UnsupportedSae
from harness.core.sae_formats.weights import decoder_norms, scale_latents


def unit_norm_decoder(sae: SparseAutoencoder) -> SparseAutoencoder:
    """The same SAE with decoder rows of unit norm (see the module docstring)."""
    weights = {"W_enc": sae.W_enc.detach(), "b_enc": sae.b_enc.detach(),
               "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()}
    norms = decoder_norms(weights)
    device = sae.W_dec.device
    if sae.activation == "topk":
        if not torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-6):
            raise UnsupportedSae(
                f"a TopK SAE's decoder rows (norms {float(norms.min()):.4g} to "
                f"{float(norms.max()):.4g}) cannot be made unit norm exactly: its k winners are "
                "chosen by the pre-activations, and scaling them by unequal norms changes which "
                "win. Read its activation i times ||W_dec_i|| for the coefficient on a unit "
                "direction")
        return SparseAutoencoder.from_weights("topk", scale_latents(weights, norms), k=sae.k,
                                              k_aux=sae.k_aux, device=device)
    if sae.activation == "relu":
        return SparseAutoencoder.from_weights("relu", scale_latents(weights, norms),
                                              k_aux=sae.k_aux, device=device)
    threshold = sae.activation_fn.tensors(sae)["threshold"].detach()
    folded = scale_latents({**weights, "threshold": threshold.expand(sae.n_latents)}, norms,
                           thresholds=("threshold",))
    return SparseAutoencoder.from_weights("jumprelu", folded, k_aux=sae.k_aux, device=device)


__all__ = ["unit_norm_decoder"]
