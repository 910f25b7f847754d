"""What an SAE is evaluated on downstream (DownstreamConfig): light, so that the command's
--help reads its defaults without importing torch."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

ABSORPTION_WORDS = 6000
"""Words of the first-letter task drawn from the vocabulary (SAEBench: all of it)."""
MIN_LETTERS = 20
"""Letters needed to report absorption at all (SAEBench min_feats_for_eval)."""
REFERENCE_FORMAT = 1
"""Version of a saved reference (the clean and zero-ablated passes); part of its key."""


@dataclass(frozen=True)
class DownstreamConfig:
    """Which model, hook point and windows an SAE is evaluated on."""

    model: str
    """A named model (harness.data.models), a local folder or a hub id of a causal LM."""
    layer: str
    """Module path of the hook point, as capture names it (e.g. model.layers.6)."""
    text: str = "pydoc"
    """A corpus name, a folder of .txt files, or a file of blank-line separated documents; the
    default, CPython's help texts, is held out from the README's SmolLM2 store (docstrings)."""
    windows: int = 64
    """How many windows (the first ones, in document order)."""
    seq_len: int = 128
    """Text tokens per window (the BOS comes in front)."""
    batch_windows: int = 8
    """Windows per forward pass (memory: batch_windows x seq_len x vocabulary logits)."""
    device: str = "cpu"
    """Where the model runs."""

    def key(self, model_path: str) -> str:
        """What identifies a reference: model, hook point and windows (not batching, device)."""
        what = {"format": REFERENCE_FORMAT, "model": self.model, "path": model_path,
                "layer": self.layer, "text": self.text, "windows": self.windows,
                "seq_len": self.seq_len}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
