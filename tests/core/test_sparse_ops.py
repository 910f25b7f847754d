"""The sparse TopK backward against the dense autograd reference."""

import copy

import pytest
import torch

from harness import SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.sparse_ops import codes_t_matmul, gather_preacts


def test_gather_preacts_gradients_equal_dense_autograd():
    gen = torch.Generator().manual_seed(0)
    b, d, n, k = 64, 12, 96, 5
    x = torch.randn(b, d, generator=gen, dtype=torch.float64)
    w = torch.randn(n, d, generator=gen, dtype=torch.float64)
    bias = torch.randn(n, generator=gen, dtype=torch.float64)
    weights = torch.randn(b, k, generator=gen, dtype=torch.float64)
    grads = []
    for sparse in (True, False):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, bias))
        if sparse:
            with torch.no_grad():
                pre = xs @ ws.T + bs
            top, idx = pre.topk(k, dim=1)
            vals = gather_preacts(top, idx, xs, ws, bs)
        else:  # the reference: autograd through the dense pre-activations
            vals, idx = (xs @ ws.T + bs).topk(k, dim=1)
        (vals * weights).sum().backward()
        grads.append((xs.grad, ws.grad, bs.grad))
    for got, want in zip(grads[0], grads[1], strict=True):
        assert torch.allclose(got, want, atol=1e-10), (got - want).abs().max()


def _train(store, sparse: bool, steps: int = 100):
    torch.manual_seed(0)
    sae = TopKSae(64, 16, 4, seed=0)
    cfg = SaeTrainingConfig(epochs=5, batch_size=256, lr=1e-3, sparse_backward=sparse,
                            dead_window_tokens=512, eval_every=20, progress=False,
                            autocast_bf16=False,  # the two backward paths, in float32
                            finish_tokens=2048)  # a finish of fixed size, not of wall time
    history = SaeTrainer(sae).train(store=store, run_id="syn", layer_signature="synthetic",
                                    config=cfg, save=False)
    assert history["step"][-1] >= steps
    return sae, history


def test_training_matches_the_dense_reference_over_100_steps(synthetic_store):
    """Same seed, same batches, AuxK active (small dead window): sparse == dense to float
    tolerance after 100+ steps."""
    sparse_sae, sparse_hist = _train(synthetic_store, sparse=True)
    dense_sae, dense_hist = _train(synthetic_store, sparse=False)
    assert sparse_hist["r2"] == pytest.approx(dense_hist["r2"], abs=1e-4)
    assert sparse_hist["loss"] == pytest.approx(dense_hist["loss"], rel=1e-4)
    for name in ("enc_weight", "b_enc", "W_dec", "b_dec"):
        a, b = getattr(sparse_sae, name), getattr(dense_sae, name)
        assert torch.allclose(a, b, atol=1e-4), (name, (a - b).abs().max())


def test_auxk_gradients_equal_dense_reference():
    torch.manual_seed(1)
    sae = TopKSae(48, 8, 3, k_aux=6, seed=1)
    dense = copy.deepcopy(sae)
    dense.sparse_backward = False
    x = torch.randn(32, 8)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = True
    for model in (sae, dense):
        out = model(x)
        ((out.reconstruction - x).pow(2).mean() + model.auxk_loss(x, out, dead)).backward()
    for name in ("enc_weight", "b_enc", "W_dec", "b_dec"):
        a, b = getattr(sae, name).grad, getattr(dense, name).grad
        assert torch.allclose(a, b, atol=1e-6), (name, (a - b).abs().max())


def test_bf16_autocast_trains(synthetic_store):
    history = SaeTrainer(TopKSae(64, 16, 4, seed=0)).train(
        store=synthetic_store, run_id="syn", layer_signature="synthetic",
        config=SaeTrainingConfig(epochs=3, batch_size=256, lr=1e-3, autocast_bf16=True,
                                 progress=False), save=False)
    assert history["r2"][-1] > 0.5


@pytest.mark.parametrize("m", [1, 5])
def test_codes_t_matmul_is_the_dense_product(m):
    gen = torch.Generator().manual_seed(m)
    b, n, d = 40, 23, 6
    indices = torch.rand(b, n, generator=gen).topk(m, dim=1).indices  # distinct within a row
    values = torch.randn(b, m, generator=gen)
    values[::3, 0] = 0.0  # zeros stay in (BatchTopK's dropped candidates)
    x = torch.randn(b, d, generator=gen)
    dense = torch.zeros(b, n).scatter_(1, indices, values)
    assert torch.allclose(codes_t_matmul(indices, values, x, n), dense.T @ x, atol=1e-5)
