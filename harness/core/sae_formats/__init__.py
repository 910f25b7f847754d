"""Reading SAE folders of every tool into our SparseAutoencoder: one protocol (SaeFormat), one
registry (FORMATS), one entry point (`read_sae`), used by `SparseAutoencoder.load` (the seed API),
`harness.evaluate` and `harness.export`.

A format converts a folder into an SAE whose forward pass is the other tool's, exactly: settings
that change the forward pass are either carried over (a decoder bias not subtracted from the
input, activations rescaled by the decoder norms, a threshold per latent) or refused with
`UnsupportedSae`, naming the file and the field. Nothing is unpickled.

    saelens.py               ours and SAELens 6.x (inference and training checkpoints, and
                             SAELens 5.x configs): cfg.json + sae_weights.safetensors
    sparsify.py              EleutherAI sparsify: cfg.json + sae.safetensors
    dictionary_learning.py   dictionary_learning: ae.pt (+ config.json)
    weights.py               the exact weight conversions they share
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from harness.core.sae_formats.dictionary_learning import DictionaryLearningFormat
from harness.core.sae_formats.errors import UnsupportedSae
from harness.core.sae_formats.saelens import SaeLensFormat
from harness.core.sae_formats.sparsify import SparsifyFormat

if TYPE_CHECKING:
    from harness.core.sae import SparseAutoencoder


class SaeFormat(Protocol):
    """One tool's on-disk SAE folder."""

    name: ClassVar[str]
    """Its registry name."""
    files: ClassVar[str]
    """What marks its folder, for messages ("cfg.json + sae.safetensors")."""

    @staticmethod
    def claims(folder: Path) -> bool:
        """Whether `folder` holds an SAE of this format."""

    @staticmethod
    def read(folder: Path, device: torch.device | str) -> SparseAutoencoder:
        """The SAE, its forward pass exactly the tool's; UnsupportedSae or CorruptFile naming the
        file and field otherwise."""


FORMATS: dict[str, type[SaeFormat]] = {
    DictionaryLearningFormat.name: DictionaryLearningFormat,
    SparsifyFormat.name: SparsifyFormat,
    SaeLensFormat.name: SaeLensFormat,
}
"""Format name -> its class, in the order they are asked to claim a folder."""


def read_sae(folder: str | Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
    """The SAE saved in `folder` by any tool of FORMATS (the first that claims it)."""
    folder = Path(folder)
    for fmt in FORMATS.values():
        if fmt.claims(folder):
            return fmt.read(folder, device)
    expected = "; ".join(f"{fmt.files} ({name})" for name, fmt in FORMATS.items())
    raise FileNotFoundError(f"{folder}: no SAE config here; expected {expected}")


__all__ = ["FORMATS", "SaeFormat", "UnsupportedSae", "read_sae"]
