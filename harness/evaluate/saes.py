"""SAE folders as Reconstructors: any folder harness.core.sae_formats reads (ours, SAELens',
sparsify's, dictionary_learning's), without running any of their code."""

from __future__ import annotations

from pathlib import Path

from harness.core.sae_formats import read_sae
from harness.evaluate.downstream import Reconstructor, sae_reconstructor


def load_reconstructor(folder: str | Path, device: str = "cpu") -> tuple[Reconstructor, int]:
    """(reconstructor, d_in) of the SAE saved in `folder`; ValueError (UnsupportedSae,
    CorruptFile) or FileNotFoundError name the file and what is wrong."""
    sae = read_sae(folder, device=device)
    return sae_reconstructor(sae), sae.n_inputs
