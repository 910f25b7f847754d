"""Matryoshka BatchTopK: its prefix losses against a direct computation, its prefixes option, and
that its nested prefixes reconstruct better than a plain BatchTopK's."""

from __future__ import annotations

import pytest
import torch

from harness import SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.activations.matryoshka import parse_prefixes
from harness.core.store import open_store


def test_prefix_losses_match_a_direct_computation():
    sae = TopKSae(64, 8, 4, seed=0, activation="matryoshka_batchtopk",
                  activation_options={"matryoshka_prefixes": "0.125,0.5"})
    x = torch.randn(32, 8)
    out = sae(x)
    mse = ((out.reconstruction - x) ** 2).mean()
    loss = sae.activation_fn.reconstruction_loss(sae, x, out, mse)
    dense = torch.zeros(32, 64).scatter_(1, out.top_indices, out.top_values)
    direct = []
    for size in (8, 32, 64):  # the first 1/8, the first 1/2, all
        recon = dense[:, :size] @ sae.W_dec[:size] + sae.b_dec
        direct.append(((recon - x) ** 2).mean())
    torch.testing.assert_close(loss, torch.stack(direct).mean())
    loss.backward()
    assert sae.W_dec.grad[:8].abs().sum() > 0


def test_prefixes_must_be_increasing_fractions():
    assert parse_prefixes("0.0625,0.25") == (0.0625, 0.25)
    for bad in ("0.5,0.25", "0,0.5", "1.5", "half"):
        with pytest.raises(ValueError, match="matryoshka_prefixes"):
            parse_prefixes(bad)


def test_its_first_latents_reconstruct_on_their_own(synthetic_store, tmp_path):
    fvu = {}
    for name in ("batchtopk", "matryoshka_batchtopk"):
        sae = TopKSae(128, 16, 4, seed=0, activation=name,
                      activation_options={"matryoshka_prefixes": "0.25"} if "ma" in name else {})
        history = SaeTrainer(sae).train(
            store=synthetic_store, run_id="syn", layer_signature="synthetic",
            config=SaeTrainingConfig(epochs=2, batch_size=256, progress=False),
            save_dir=tmp_path / name)
        assert history.decoder_refit_tokens is None if "ma" in name else True
        x = open_store(synthetic_store).open("syn", "synthetic").read_shard(2)[:1024].float()
        values, indices = sae.encode(x)
        sae.requires_grad_(False)
        inside = values * (indices < 32)
        recon = sae.decode(inside, indices)
        fvu[name] = float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert fvu["matryoshka_batchtopk"] < fvu["batchtopk"], fvu
