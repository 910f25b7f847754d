"""SAE folders read for the downstream evaluation: ours, and SAELens' TopK, ReLU and JumpReLU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.core.sae import TopKSae
from harness.evaluate.saes import load_reconstructor


def _saelens(folder: Path, cfg: dict, tensors: dict) -> Path:
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    return folder


def test_ours_reconstructs_as_the_sae_does(tmp_path: Path):
    sae = TopKSae(32, 8, 4, seed=1)
    run, d_in = load_reconstructor(sae.save(tmp_path / "ours"))
    x = torch.randn(5, 8)
    x_hat, active = run(x)
    assert d_in == 8 and torch.allclose(x_hat, sae(x).reconstruction) and int(active) <= 20


@pytest.mark.parametrize("architecture", ["standard", "jumprelu"])
def test_saelens_relu_and_jumprelu_follow_their_formulas(tmp_path: Path, architecture: str):
    g = torch.Generator().manual_seed(0)
    w = {"W_enc": torch.randn(8, 32, generator=g), "b_enc": torch.randn(32, generator=g),
         "W_dec": torch.randn(32, 8, generator=g), "b_dec": torch.randn(8, generator=g),
         "threshold": torch.rand(32, generator=g)}
    folder = _saelens(tmp_path / architecture, {"architecture": architecture, "d_in": 8,
                                                "d_sae": 32}, w)
    run, d_in = load_reconstructor(folder)
    x = torch.randn(6, 8)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    z = pre * (pre > w["threshold"]) if architecture == "jumprelu" else torch.relu(pre)
    x_hat, active = run(x)
    assert d_in == 8 and torch.allclose(x_hat, z @ w["W_dec"] + w["b_dec"], atol=1e-5)
    assert int(active) == int((z > 0).sum())


def test_saelens_topk_with_k_in_its_activation_kwargs(tmp_path: Path):
    sae = TopKSae(32, 8, 4, seed=2)
    w = {"W_enc": sae.W_enc.detach().contiguous(), "b_enc": sae.b_enc.detach(),
         "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()}
    folder = _saelens(tmp_path / "topk", {"architecture": "topk", "d_in": 8, "d_sae": 32,
                                          "activation_fn_kwargs": {"k": 4}}, w)
    run, _ = load_reconstructor(folder)
    x = torch.randn(5, 8)
    assert torch.allclose(run(x)[0], sae(x).reconstruction, atol=1e-6)


def test_an_unknown_architecture_is_named(tmp_path: Path):
    folder = _saelens(tmp_path / "gated", {"architecture": "gated", "d_in": 8, "d_sae": 32},
                      {"W_enc": torch.zeros(8, 32)})
    with pytest.raises(ValueError, match="architecture 'gated'"):
        load_reconstructor(folder)
