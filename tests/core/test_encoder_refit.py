"""The least-squares encoder refit: its codes, its solve, and what it buys in the trainer."""

from __future__ import annotations

import pytest
import torch

from harness.core.sae import TopKSae
from harness.core.store import LocalStore
from harness.core.training import SaeTrainer, SaeTrainingConfig
from harness.core.training.encoder_refit import (
    EncoderRefit,
    least_squares_codes,
    refit_encoder_,
    solve_encoder_refits,
)
from harness.core.training.refit import refit_decoder_


def _planted(n: int = 6000, d: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(64, d, generator=gen), dim=1)
    codes = torch.rand(n, 64, generator=gen) * (torch.rand(n, 64, generator=gen) < 0.06)
    return codes @ dirs + 0.05 * torch.randn(n, d, generator=gen)


def _mse(sae: TopKSae, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((sae(x).reconstruction - x).pow(2).mean())


def test_least_squares_codes_solve_each_tokens_system() -> None:
    gen = torch.Generator().manual_seed(1)
    w_dec, x = torch.randn(40, 12, generator=gen), torch.randn(5, 12, generator=gen)
    idx = torch.stack([torch.randperm(40, generator=gen)[:4] for _ in range(5)])
    codes = least_squares_codes(w_dec, x, idx)
    for t in range(5):
        expect = torch.linalg.lstsq(w_dec[idx[t]].T, x[t]).solution
        torch.testing.assert_close(codes[t], expect, atol=1e-3, rtol=1e-3)


def test_the_conjugate_gradient_solve_is_each_latents_ridge_regression() -> None:
    """Enough iterations reach the exact per-latent proximal ridge step, built here densely."""
    x = _planted(n=1500, d=8)
    sae = TopKSae(n_latents=12, n_inputs=8, k=3, seed=0)
    refit_decoder_(sae, x.split(500))
    before_w, before_b = sae.enc_weight.detach().clone(), sae.b_enc.detach().clone()
    refit = EncoderRefit(sae)
    solve_encoder_refits([refit], lambda: x.split(500), iterations=30)  # n = d + 1 = 9 suffices
    refit.apply_()
    with torch.no_grad():
        xt = torch.cat([x - sae.b_dec, torch.ones(len(x), 1)], 1)
        pre = xt[:, :-1] @ before_w.T + before_b
        top, idx = pre.topk(3, dim=-1)
        codes = least_squares_codes(sae.W_dec, xt[:, :-1], idx)
    for i in range(12):
        rows, slots = (idx == i).nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        a, r = xt[rows], (top - codes)[rows, slots]
        gram = a.T @ a
        gram += (0.1 * gram.diagonal().mean() + 1e-8) * torch.eye(9)
        step = torch.linalg.solve(gram, a.T @ r)
        torch.testing.assert_close(sae.enc_weight[i].detach(), before_w[i] - step[:-1],
                                   atol=2e-4, rtol=2e-3)
        torch.testing.assert_close(sae.b_enc[i].detach(), before_b[i] - step[-1],
                                   atol=2e-4, rtol=2e-3)


def test_an_encoder_step_then_a_decoder_refit_lowers_the_error() -> None:
    x = _planted()
    sae = TopKSae(n_latents=64, n_inputs=16, k=4, seed=0)
    refit_decoder_(sae, x.split(1000))
    before = _mse(sae, x)
    assert refit_encoder_(sae, lambda: x.split(1000)) == len(x)
    refit_decoder_(sae, x.split(1000))
    assert _mse(sae, x) < 0.97 * before


def test_a_pass_with_other_batches_is_refused() -> None:
    x = _planted(n=2000)
    refit = EncoderRefit(TopKSae(n_latents=64, n_inputs=16, k=4, seed=0))
    passes = iter([x.split(500), x.split(500)[:3]])
    with pytest.raises(RuntimeError, match="3 batches"):
        solve_encoder_refits([refit], lambda: next(passes), iterations=1)


def _train(store: LocalStore, tmp_path, name: str, activation: str = "topk", **fields):
    sae = TopKSae(n_latents=64, n_inputs=16, k=4, seed=0, activation=activation)
    fields = {"finish_tokens": 10**9, "encoder_refit": True, **fields}
    cfg = SaeTrainingConfig(batch_size=512, lr=4e-3, progress=False, **fields)
    history = SaeTrainer(sae).train(store=store, run_id="acts", layer_signature="layer",
                                    config=cfg, save_dir=tmp_path / name)
    return sae, history


def test_the_trainer_refits_the_encoder_within_its_token_cap(tmp_path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_activations("acts", "layer", _planted())
    _, on = _train(store, tmp_path, "on", max_train_tokens=3000, eval_every=3)
    _, off = _train(store, tmp_path, "off", max_train_tokens=3000, eval_every=3,
                    encoder_refit=False)
    _, capped = _train(store, tmp_path, "capped", max_train_tokens=3000,
                       encoder_refit_max_tokens=1000)
    _, batchtopk = _train(store, tmp_path, "btk", max_train_tokens=3000, activation="batchtopk")
    assert on.encoder_refit_tokens == 6 * 512 and off.encoder_refit_tokens is None
    assert capped.encoder_refit_tokens == 2 * 512  # whole batches, the first of the refit's
    assert batchtopk.encoder_refit_tokens is None  # TopK only
    assert on.decoder_refit_tokens == off.decoder_refit_tokens == 6 * 512
    assert on["fvu"][0] == off["fvu"][0]  # the same training up to the finish
    assert on["fvu"][-1] < off["fvu"][-1]
