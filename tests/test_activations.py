"""The SAE-activation protocol and registry: the shipped activations, and a new one added as
docs/architecture.md shows (its own class plus one registry line) trains, saves and loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from harness import SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.activations import ACTIVATIONS, activation_class
from harness.core.activations.batchtopk import CANDIDATES


class MarginTopK:
    """docs/architecture.md's worked example: top k, kept only above a margin."""

    name: ClassVar[str] = "margin_topk"
    params: ClassVar[frozenset[str]] = frozenset({"k"})
    supports_encoder_refit: ClassVar[bool] = False

    def attach(self, sae: TopKSae) -> None:
        sae.register_buffer("margin", torch.tensor(0.1))

    def candidates(self, k: int, n_latents: int) -> int:
        return k

    def select(self, sae: TopKSae, values: torch.Tensor) -> torch.Tensor:
        return values * (values > sae.margin)

    def tensors(self, sae: TopKSae) -> dict[str, torch.Tensor]:
        return {"margin": sae.margin}

    def config(self, sae: TopKSae) -> dict[str, Any]:
        return {"margin": float(sae.margin)}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_each_shipped_activation_round_trips_with_identical_codes(name: str, tmp_path: Path):
    sae = TopKSae(64, 16, 4, seed=0, activation=name)
    x = torch.randn(256, 16)
    with torch.enable_grad():
        sae(x)  # BatchTopK learns its threshold in a training forward
    sae.save(tmp_path)
    loaded = TopKSae.load(tmp_path)
    before, after = sae.encode(x), loaded.encode(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert loaded.activation == name


def test_candidates_and_needs_come_from_the_activation():
    assert activation_class("topk")().candidates(8, 100) == 8
    assert activation_class("batchtopk")().candidates(8, 100) == CANDIDATES * 8
    assert activation_class("batchtopk")().candidates(8, 20) == 20
    assert all("k" in cls.params for cls in ACTIVATIONS.values())
    with pytest.raises(ValueError, match="activation must be one of"):
        activation_class("gated")


def test_a_new_activation_is_its_class_and_one_registry_line(synthetic_store: Path,
                                                             tmp_path: Path, monkeypatch):
    monkeypatch.setitem(ACTIVATIONS, MarginTopK.name, MarginTopK)
    sae = TopKSae(32, 16, 4, seed=0, activation="margin_topk")
    history = SaeTrainer(sae).train(
        store=synthetic_store, run_id="syn", layer_signature="synthetic",
        config=SaeTrainingConfig(epochs=1, batch_size=256, progress=False,
                                 finish_tokens=10**9, encoder_refit=True),
        save_dir=tmp_path / "sae")
    assert history.encoder_refit_tokens is None  # it says the encoder refit does not apply
    assert history.decoder_refit_tokens is not None and history["r2"][-1] > 0.3
    loaded = TopKSae.load(tmp_path / "sae")
    x = torch.randn(64, 16)
    values, _ = loaded.encode(x)
    assert bool(((values == 0) | (values > 0.1)).all())  # the margin holds after loading
    assert torch.equal(values, sae.encode(x)[0])
