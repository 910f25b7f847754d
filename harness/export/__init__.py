"""`python -m harness.export`: write any SAE folder harness reads (ours, SAELens', sparsify's,
dictionary_learning's) as one that SAELens 6.x loads, optionally with decoder rows of unit norm.

`unit_norm_decoder` divides each decoder row by its norm and multiplies the latent's encoder
column, bias and threshold by it: the reconstructions are the same, and each activation is then
the latent's coefficient on a unit direction, which SAELens' `fold_W_dec_norm` and many analysis
tools assume. It is exact for ReLU, JumpReLU, BatchTopK and Matryoshka (the last two become a
JumpReLU: their one threshold becomes one per latent). A TopK SAE has no exact form: its k
winners are chosen by the pre-activations, and scaling them by unequal norms changes which win
(SAELens' own fold_W_dec_norm refuses TopK for the same reason), so it is refused unless its rows
already share one norm.
"""

from __future__ import annotations

import torch

from harness.core.sae import TopKSae
from harness.core.sae_formats import UnsupportedSae
from harness.core.sae_formats.weights import decoder_norms, scale_latents


def unit_norm_decoder(sae: TopKSae) -> TopKSae:
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
        return TopKSae.from_weights("topk", scale_latents(weights, norms), k=sae.k,
                                    k_aux=sae.k_aux, device=device)
    if sae.activation == "relu":
        return TopKSae.from_weights("relu", scale_latents(weights, norms), k_aux=sae.k_aux,
                                    device=device)
    threshold = sae.activation_fn.tensors(sae)["threshold"].detach()
    folded = scale_latents({**weights, "threshold": threshold.expand(sae.n_latents)}, norms,
                           thresholds=("threshold",))
    return TopKSae.from_weights("jumprelu", folded, k_aux=sae.k_aux, device=device)


__all__ = ["unit_norm_decoder"]
