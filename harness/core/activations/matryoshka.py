"""Matryoshka BatchTopK (Bussmann et al. 2025; Nabeshima 2025): BatchTopK whose nested prefixes
of the dictionary each learn to reconstruct the input on their own.

The latents are chosen as BatchTopK chooses them, over the whole dictionary. The reconstruction
term of the loss is the mean, over the prefixes and the full dictionary, of the MSE of the
reconstruction from the active latents inside each, so the first latents learn general features
and later ones refine them. `matryoshka_prefixes` gives the prefix sizes as fractions of the
dictionary, comma-separated ("0.0625,0.25": the first 1/16 and the first 1/4). The least-squares
decoder refit fits only the full reconstruction, so it does not run for this activation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from harness.core.activations.batchtopk import BatchTopK

if TYPE_CHECKING:
    from harness.core.sae import SaeOutput, SparseAutoencoder


def parse_prefixes(text: str) -> tuple[float, ...]:
    """'0.0625,0.25' -> (0.0625, 0.25); ValueError unless increasing fractions in (0, 1)."""
    try:
        fractions = tuple(float(part) for part in str(text).split(","))
    except ValueError:
        raise ValueError(f"matryoshka_prefixes must be comma-separated fractions of the "
                         f"dictionary such as '0.0625,0.25', got {text!r}") from None
    if not all(0 < f < 1 for f in fractions) or list(fractions) != sorted(set(fractions)):
        raise ValueError(f"matryoshka_prefixes must be increasing fractions in (0, 1), got "
                         f"{text!r}")
    return fractions


class MatryoshkaBatchTopK(BatchTopK):
    """BatchTopK trained so that each prefix of the dictionary reconstructs on its own."""

    name: ClassVar[str] = "matryoshka_batchtopk"
    options: ClassVar[dict[str, Any]] = {"matryoshka_prefixes": "0.0625,0.25"}
    supports_decoder_refit: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.fractions = parse_prefixes(self.matryoshka_prefixes)

    def prefix_sizes(self, n_latents: int) -> list[int]:
        """Latents in each proper prefix (at least 1, fewer than n_latents)."""
        return sorted({min(n_latents - 1, max(1, round(f * n_latents))) for f in self.fractions})

    def reconstruction_loss(self, sae: SparseAutoencoder, x: torch.Tensor, out: SaeOutput,
                            mse: torch.Tensor) -> torch.Tensor:
        losses = [mse]
        for size in self.prefix_sizes(sae.n_latents):
            inside = out.top_values * (out.top_indices < size)
            prefix = sae.decode(inside, out.top_indices)
            if out.skip_out is not None:  # a skip-transcoder's linear path is in every prefix
                prefix = prefix + out.skip_out
            losses.append((prefix.float() - x).pow(2).mean())
        return torch.stack(losses).mean()
