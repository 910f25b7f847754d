"""The SAE-activation protocol and registry: the shipped activations, and a new one added as
docs/architecture.md shows (its own class plus one registry line) trains, saves and loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from harness import SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.activations import ACTIVATIONS, activation_class
from harness.core.activations.base import ActivationBase
from harness.core.activations.batchtopk import CANDIDATES


class MarginTopK(ActivationBase):
    """docs/architecture.md's worked example: top k, kept only above a margin."""

    name: ClassVar[str] = "margin_topk"

    def attach(self, sae: TopKSae) -> None:
        sae.register_buffer("margin", torch.tensor(0.1))

    def select(self, sae: TopKSae, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return values * (values > sae.margin)

    def tensors(self, sae: TopKSae) -> dict[str, torch.Tensor]:
        return {"margin": sae.margin}

    def config(self, sae: TopKSae) -> dict[str, Any]:
        return {"margin": float(sae.margin)}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_each_shipped_activation_round_trips_with_identical_codes(name: str, tmp_path: Path):
    options = {"matryoshka_prefixes": "0.125,0.5"} if name == "matryoshka_batchtopk" else {}
    sae = TopKSae(64, 16, 4, seed=0, activation=name, activation_options=options)
    sae.activation_fn.begin_training(sae, 0.5)  # JumpReLU: thresholds at half the data's scale
    x = torch.randn(256, 16)
    with torch.enable_grad():
        sae(x)  # BatchTopK learns its threshold in a training forward
    with torch.no_grad():
        sae.b_enc.normal_()  # thresholds and biases that differ between latents
        if name == "jumprelu":
            sae.log_threshold.add_(torch.rand(64) - 0.5)
    sae.save(tmp_path)
    loaded = TopKSae.load(tmp_path)
    before, after = sae.encode_dense(x), loaded.encode_dense(x)
    assert torch.equal(before, after) and (before > 0).any()
    assert loaded.activation == name and loaded.k == sae.k
    assert loaded.activation_fn.config(loaded) == sae.activation_fn.config(sae)


def test_candidates_and_needs_come_from_the_activation():
    assert activation_class("topk")().candidates(8, 100) == 8
    assert activation_class("batchtopk")().candidates(8, 100) == CANDIDATES * 8
    assert activation_class("batchtopk")().candidates(8, 20) == 20
    assert activation_class("relu")().candidates(None, 100) == 100
    assert {name for name, cls in ACTIVATIONS.items() if "k" in cls.params} == {
        "topk", "batchtopk", "matryoshka_batchtopk"}
    assert activation_class("relu").params == {"l1_lambda"}
    assert activation_class("jumprelu").params == {"l0_lambda"}
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
