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

from typing import TYPE_CHECKING

from harness.lazy import lazy_exports

__all__ = ["unit_norm_decoder"]

if TYPE_CHECKING:
    from harness.export.unit_norm import unit_norm_decoder


__getattr__ = lazy_exports(__name__, {"unit_norm_decoder": "harness.export.unit_norm"})
