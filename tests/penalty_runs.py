"""Test helper: train a penalised SAE (ReLU + L1, JumpReLU + L0) on the synthetic store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import SaeTrainer, SaeTrainingConfig, TopKSae


def trained(store: Path, out: Path, activation: str, **penalty: float) -> tuple[TopKSae, Any]:
    """A 128-latent `activation` SAE trained 2 epochs on the synthetic store with `penalty`
    (l1_lambda or l0_lambda) at lr 5e-3 (the penalties' effect, not the default rate's); the SAE
    and its history."""
    sae = TopKSae(128, 16, None, seed=0, activation=activation)
    history = SaeTrainer(sae).train(
        store=store, run_id="syn", layer_signature="synthetic",
        config=SaeTrainingConfig(epochs=2, batch_size=256, lr=5e-3, progress=False, **penalty),
        save_dir=out)
    return sae, history
