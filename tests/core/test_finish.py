"""The finish's budget: how many tokens it reads, the prior that makes a small sample safe, and
its time in the history."""

from __future__ import annotations

import torch

from harness.core.runtime.cpu_bf16 import cpu_has_bf16
from harness.core.sae import TopKSae
from harness.core.training import SaeTrainer, SaeTrainingConfig
from harness.core.training.finish import (
    DECODER_PASS_STEPS,
    ENCODER_PASS_STEPS,
    finish_batches,
    solve_steps,
)
from harness.core.training.refit import refit_decoder_


def test_the_budget_buys_a_share_of_the_batches_once_the_solve_is_paid() -> None:
    cfg = SaeTrainingConfig(batch_size=4096, finish_budget=0.1, autocast_bf16=False)
    solve = solve_steps(3072, 384, 4096, bf16=False)
    assert 1.5 < solve < 2  # a Cholesky of 3073^2 against a 4096 x 3072 x 384 product
    assert solve_steps(3072, 384, 4096, bf16=True) == 1.7 * solve  # a bf16 step is faster
    # 50k tokens (13 steps): 1.3 steps of budget do not pay for the solve: no finish
    assert finish_batches(cfg, 3072, 384, 13, 13, encoder=False) == 0
    # 1M tokens (245 steps): (24.5 - solve) / DECODER_PASS_STEPS batches
    at_1m = finish_batches(cfg, 3072, 384, 245, 245, encoder=False)
    assert at_1m == int((24.5 - solve) / DECODER_PASS_STEPS) and 10 <= at_1m <= 20
    assert finish_batches(cfg.replace(autocast_bf16=True), 3072, 384, 245, 245, False) < at_1m
    # the encoder refit costs two solves and its passes: fewer batches for the same budget
    assert finish_batches(cfg, 3072, 384, 245, 245, encoder=True) == int(
        (24.5 - 2 * solve) / (DECODER_PASS_STEPS + ENCODER_PASS_STEPS))
    # more steps buy more batches, never more than were trained on
    assert finish_batches(cfg, 3072, 384, 2450, 2450, encoder=False) > at_1m
    assert finish_batches(cfg.replace(finish_budget=10.0), 3072, 384, 245, 100,
                          encoder=False) == 100
    # finish_tokens overrides the budget, in whole batches
    assert finish_batches(cfg.replace(finish_tokens=5000), 3072, 384, 13, 13, False) == 2
    assert finish_batches(cfg.replace(finish_budget=0.0), 3072, 384, 245, 245, False) == 0


def test_the_prior_pulls_each_row_towards_the_trained_one() -> None:
    torch.manual_seed(0)
    x = torch.randn(2000, 12) * 3 + 1
    plain, pulled, held = (TopKSae(n_latents=48, n_inputs=12, k=4, seed=1) for _ in range(3))
    trained = plain.W_dec.detach().clone()
    refit_decoder_(plain, x.split(512))
    refit_decoder_(pulled, x.split(512), prior_tokens=2000)  # the prior weighs as the data
    refit_decoder_(held, x.split(512), prior_tokens=1e9)
    far = (plain.W_dec - trained).norm(dim=1)
    mid = (pulled.W_dec - trained).norm(dim=1)
    fired = far > 0
    assert bool((mid[fired] < far[fired]).all())  # every row moved less
    torch.testing.assert_close(held.W_dec, trained, atol=1e-4, rtol=0)  # a huge prior: no move
    # the pulled decoder minimises SSE + sum_i (prior/T) A_ii ||W_i - W0_i||^2: zero gradient
    values, indices = pulled.encode(x)
    w = pulled.W_dec.detach().clone().requires_grad_(True)
    bias = pulled.b_dec.detach().clone().requires_grad_(True)
    x_hat = torch.nn.functional.embedding_bag(indices, w, per_sample_weights=values,
                                              mode="sum") + bias
    energy = torch.zeros(48).index_add_(0, indices.flatten(), values.flatten() ** 2)
    loss = (x_hat - x).pow(2).sum() + (energy[:, None] * (w - trained).pow(2)).sum()
    loss.backward()
    assert float(w.grad.abs().max()) < 1e-2 * float(energy.max())
    assert float(bias.grad.abs().max()) < 1e-2 * float(energy.max())


def test_the_history_times_the_finish_against_the_loop(synthetic_store) -> None:
    def train(**fields):
        cfg = SaeTrainingConfig(epochs=2, batch_size=256, progress=False, **fields)
        return SaeTrainer(TopKSae(64, 16, 4, seed=0)).train(
            store=synthetic_store, run_id="syn", layer_signature="synthetic", config=cfg,
            save_dir=None)

    budgeted, full, off = (train(), train(finish_tokens=10**9),
                           train(decoder_refit=False))
    for history in (budgeted, full, off):
        assert history.train_loop_s > 0
    assert off.finish_s == 0 and off.finish_share == 0 and off.decoder_refit_tokens is None
    assert full.decoder_refit_tokens == full.n_train_tokens and full.finish_s > 0
    assert full.finish_share == full.finish_s / full.train_loop_s
    # the default budget reads what finish_batches allows for these 2 epochs of steps
    steps = budgeted.step[-1]
    cfg = SaeTrainingConfig(batch_size=256, autocast_bf16=cpu_has_bf16())  # as resolved
    want = finish_batches(cfg, 64, 16, steps, steps // 2, encoder=False) * 256
    assert 0 < budgeted.decoder_refit_tokens == want < full.decoder_refit_tokens


def test_the_kept_batches_give_the_sae_a_second_read_gives(synthetic_store, monkeypatch) -> None:
    """The loop keeps epoch 0's first batches for the finish (a streamed store would fill its
    shuffle buffer again); the finish on them equals the finish on a fresh read."""
    from harness.core.training import finish

    def train():
        cfg = SaeTrainingConfig(epochs=2, batch_size=256, progress=False, finish_tokens=1024,
                                in_memory_bytes=1, shuffle_buffer_tokens=2048)  # streamed
        sae = TopKSae(64, 16, 4, seed=0)
        history = SaeTrainer(sae).train(store=synthetic_store, run_id="syn",
                                        layer_signature="synthetic", config=cfg, save_dir=None)
        return sae, history

    reads = []
    real = finish.ActivationLoader.train_batches

    def counted(self, epoch):
        reads.append(epoch)
        return real(self, epoch)

    monkeypatch.setattr(finish.ActivationLoader, "train_batches", counted)
    kept, h_kept = train()
    kept_reads = reads.count(0)
    assert h_kept.decoder_refit_tokens == 1024
    monkeypatch.setattr(finish, "STASH_BYTES", 0)
    reads.clear()
    fresh, h_fresh = train()
    assert reads.count(0) == kept_reads + 1  # without the kept batches the finish reads again
    torch.testing.assert_close(kept.W_dec, fresh.W_dec)
    assert h_kept["fvu"][-1] == h_fresh["fvu"][-1]
