import json
import math

import pytest
import torch
import torch.nn.functional as F

from harness.core.metrics import DeadLatents
from harness.core.sae import TopKSae, default_k_aux, geometric_median


def test_seed_constructor_honours_k():
    sae = TopKSae(n_latents=4096, n_inputs=768, k=32)
    x = torch.randn(10, 768)
    out = sae(x)
    assert out.top_indices.shape == (10, 32) and out.top_values.shape == (10, 32)
    assert out.reconstruction.shape == (10, 768)
    dense = sae.encode_dense(x)
    assert int((dense > 0).sum(1).max()) <= 32
    assert sae.k_aux == 512  # the paper's value for d = 768


def test_encoder_starts_as_scaled_transpose_of_unit_norm_decoder():
    sae = TopKSae(64, 16, 4, seed=0)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-6)
    assert torch.allclose(sae.W_enc, sae.W_dec.T / math.sqrt(3))  # nn.Linear's row norm
    legacy = TopKSae(64, 16, 4, seed=0, encoder_init_scale=1.0)
    assert torch.equal(legacy.W_enc, legacy.W_dec.T)
    with pytest.raises(ValueError, match="encoder_init_scale"):
        TopKSae(64, 16, 4, encoder_init_scale=0.0)


def test_decode_equals_dense_reference():
    sae = TopKSae(32, 8, 3, seed=1)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(8))
    x = torch.randn(5, 8)
    out = sae(x)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    vals, idx = pre.topk(3, dim=1)
    dense = torch.zeros(5, 32).scatter_(1, idx, F.relu(vals))
    assert torch.allclose(out.reconstruction, dense @ sae.W_dec + sae.b_dec, atol=1e-5)


def test_parallel_gradient_removed_and_decoder_renormalised():
    sae = TopKSae(16, 8, 2, seed=0)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    sae(x).reconstruction.pow(2).sum().backward()
    sae.remove_parallel_grads_()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1).detach()
    assert float(parallel.abs().max()) <= 1e-6 * float(sae.W_dec.grad.abs().max())
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder_()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(16), atol=1e-6)


def test_auxk_loss_zero_without_dead_latents_and_positive_with():
    sae = TopKSae(16, 8, 2, seed=0)
    x = torch.randn(6, 8)
    out = sae(x)
    assert float(sae.auxk_loss(x, out, torch.zeros(16, dtype=torch.bool))) == 0.0
    dead = torch.zeros(16, dtype=torch.bool)
    dead[:5] = True
    loss = sae.auxk_loss(x, out, dead)
    loss.backward()
    assert float(loss.detach()) > 0
    assert sae.W_dec.grad[5:].abs().sum() == 0  # only dead rows learn from AuxK
    # the trainer passes the dead latents it read (no read of the device here): same loss
    assert torch.equal(sae.auxk_loss(x, out, DeadLatents.of(dead)), loss)


def test_geometric_median_resists_outliers():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    med = geometric_median(pts)
    assert med.norm() < 1.5  # the mean would sit near (20.4, 20.4)


def test_save_load_round_trip_is_exact_and_saelens_named(tmp_path):
    sae = TopKSae(32, 8, 4, seed=3)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p))
    sae.save(tmp_path, metadata={"layer_signature": "h.0"})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and (cfg["d_in"], cfg["d_sae"], cfg["k"]) == (8, 32, 4)
    loaded = TopKSae.load(tmp_path)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name))
    assert loaded.W_enc.shape == (8, 32) and loaded.W_dec.shape == (32, 8)
    x = torch.randn(3, 8)
    assert torch.equal(loaded(x).reconstruction, sae(x).reconstruction)


def test_load_rejects_other_architectures(tmp_path):
    TopKSae(8, 4, 2).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["architecture"] = "gated"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="saved as architecture 'topk', not 'gated'"):
        TopKSae.load(tmp_path)
    del cfg["saesweep_activation"]  # not ours: SAELens' architectures only
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="architecture 'gated' is not read"):
        TopKSae.load(tmp_path)


def test_bad_k_is_rejected():
    with pytest.raises(ValueError, match="k must be"):
        TopKSae(8, 4, 9)
    assert default_k_aux(64, 512) == 32


def test_batchtopk_keeps_k_per_token_on_average_and_learns_a_threshold():
    torch.manual_seed(0)
    sae = TopKSae(256, 16, 4, seed=0, activation="batchtopk")
    x = torch.randn(512, 16) * torch.rand(512, 1) * 3  # tokens of very different norms
    out = sae(x)  # a training forward (gradients on)
    per_token = (out.top_values > 0).sum(-1)
    assert out.top_values.shape == (512, 16)  # 4k candidates per token
    assert per_token.sum() == 4 * 512  # k*B over the batch...
    assert per_token.min() < 4 < per_token.max()  # ...spread unevenly over its tokens
    cut = out.top_values[out.top_values > 0].min()
    assert float(sae.threshold) == pytest.approx(float(cut.detach()))  # the first batch sets it
    with torch.no_grad():  # inference: every latent above the threshold, no 4k cap
        codes, pre = sae.encode_dense(x), sae.pre_activations(x)
    assert torch.equal(codes, torch.relu(pre) * (pre > sae.threshold))
    out.reconstruction.pow(2).sum().backward()
    grads = sae.enc_weight.grad.abs().sum(-1) > 0
    assert set(torch.nonzero(grads).flatten().tolist()) == set(
        out.top_indices[out.top_values > 0].unique().tolist())  # only kept latents learn


def test_batchtopk_sparse_backward_matches_the_dense_reference():
    x = torch.randn(64, 16)
    saes = [TopKSae(128, 16, 4, seed=3, activation="batchtopk") for _ in range(2)]
    saes[1].sparse_backward = False
    grads = []
    for sae in saes:
        out = sae(x)
        (out.reconstruction - x).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in (sae.enc_weight, sae.b_enc, sae.W_dec)])
    for sparse, dense in zip(*grads, strict=True):
        assert torch.allclose(sparse, dense, atol=1e-6)


def test_batchtopk_round_trips_with_its_threshold(tmp_path):
    sae = TopKSae(64, 8, 3, seed=1, activation="batchtopk")
    sae(torch.randn(128, 8))  # sets the threshold
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    # SAELens' inference form: a JumpReLU with the one threshold for every latent
    assert cfg["architecture"] == "jumprelu" and cfg["saesweep_activation"] == "batchtopk"
    assert cfg["threshold"] > 0
    loaded = TopKSae.load(tmp_path)
    assert loaded.activation == "batchtopk"
    assert torch.equal(loaded.threshold, sae.threshold)
    x = torch.randn(32, 8)
    assert torch.equal(loaded.encode(x)[0], sae.encode(x)[0])
    (tmp_path / "sae_weights.safetensors").unlink()
    TopKSae(64, 8, 3).save(tmp_path)  # weights without a threshold under a batchtopk cfg.json
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"missing tensors \['threshold'\]"):
        TopKSae.load(tmp_path)
    with pytest.raises(ValueError, match="activation must be one of"):
        TopKSae(64, 8, 3, activation="gated")
