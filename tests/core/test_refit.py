"""The least-squares decoder refit: exact, code-preserving, and wired into the trainer."""

from __future__ import annotations

import pytest
import torch

from harness.core.sae import TopKSae
from harness.core.store import LocalStore
from harness.core.training import SaeTrainer, SaeTrainingConfig
from harness.core.training.refit import DecoderRefit, refit_decoder_


def _mse(sae: TopKSae, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((sae(x).reconstruction - x).pow(2).mean())


def _decoder_grad(sae: TopKSae, x: torch.Tensor) -> float:
    """Largest gradient of the summed squared error w.r.t. the decoder rows and output bias."""
    values, indices = sae.encode(x)
    w_dec = sae.W_dec.detach().clone().requires_grad_(True)
    bias = sae.b_dec.detach().clone().requires_grad_(True)
    x_hat = torch.nn.functional.embedding_bag(indices, w_dec, per_sample_weights=values,
                                              mode="sum") + bias
    (x_hat - x).pow(2).sum().backward()
    return max(float(w_dec.grad.abs().max()), float(bias.grad.abs().max()))


def test_refit_is_the_least_squares_decoder_and_keeps_the_codes() -> None:
    torch.manual_seed(0)
    sae = TopKSae(n_latents=48, n_inputs=12, k=4, seed=1)
    x = torch.randn(2000, 12) * 3 + 1
    before_codes = sae.encode(x)
    before, grad_before = _mse(sae, x), _decoder_grad(sae, x)
    used = refit_decoder_(sae, x.split(512))
    assert used == 2000
    values, indices = sae.encode(x)
    assert torch.equal(indices, before_codes[1])  # the encoder chooses the same latents
    torch.testing.assert_close(values, before_codes[0], atol=1e-4, rtol=1e-4)
    assert _mse(sae, x) < 0.9 * before
    # optimal up to the small ridge: the decoder's gradient all but vanishes
    assert _decoder_grad(sae, x) < 1e-3 * grad_before


def test_latents_that_never_fire_keep_their_rows() -> None:
    sae = TopKSae(n_latents=16, n_inputs=8, k=2, seed=0)
    x = torch.randn(256, 8)
    with torch.no_grad():
        sae.b_enc[5] = -1e6  # latent 5 can never be chosen with a positive value
    old = sae.W_dec[5].detach().clone()
    refit = DecoderRefit(16, 8, torch.device("cpu"))
    refit.observe(sae, x)
    _rows, _bias, fired, _skip = refit.solve()
    assert not fired[5] and fired.sum() > 2
    refit.apply_(sae)
    torch.testing.assert_close(sae.W_dec[5].detach(), old)


def test_batchtopk_refits_on_its_inference_codes_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    sae = TopKSae(n_latents=32, n_inputs=8, k=3, seed=0, activation="batchtopk")
    x = torch.randn(1024, 8)
    sae(x)  # a forward with gradients enabled is a training one: it sets the threshold
    before = _mse(sae, x)
    refit_decoder_(sae, x.split(256))
    assert _mse(sae, x) < before
    sae.save(tmp_path / "sae")
    loaded = TopKSae.load(tmp_path / "sae")
    torch.testing.assert_close(loaded(x).reconstruction, sae(x).reconstruction)
    assert float(loaded.threshold) == float(sae.threshold) > 0


def _store(tmp_path, n: int = 6000, d: int = 16) -> LocalStore:
    gen = torch.Generator().manual_seed(3)
    dirs = torch.nn.functional.normalize(torch.randn(64, d, generator=gen), dim=1)
    codes = torch.rand(n, 64, generator=gen) * (torch.rand(n, 64, generator=gen) < 0.06)
    store = LocalStore(tmp_path / "store")
    store.put_activations("acts", "layer", codes @ dirs + 0.05 * torch.randn(n, d, generator=gen))
    return store


def _train(store: LocalStore, tmp_path, name: str, **fields):
    sae = TopKSae(n_latents=64, n_inputs=16, k=4, seed=0)
    # every token trained on, the plain fit: the mechanics (the budget: test_finish.py)
    fields = {"finish_tokens": 10**9, "decoder_prior_tokens": 0, **fields}
    cfg = SaeTrainingConfig(batch_size=512, lr=4e-3, progress=False, **fields)
    history = SaeTrainer(sae).train(store=store, run_id="acts", layer_signature="layer",
                                    config=cfg, save_dir=tmp_path / name)
    return sae, history


def test_the_trainer_refits_on_the_tokens_it_trained_on(tmp_path) -> None:
    store = _store(tmp_path)
    refit, h_refit = _train(store, tmp_path, "refit", max_train_tokens=3000, eval_every=3)
    plain, h_plain = _train(store, tmp_path, "plain", max_train_tokens=3000, eval_every=3,
                            decoder_refit=False)
    assert h_refit.decoder_refit_tokens == 6 * 512  # the 6 batches of the budget, once
    assert h_plain.decoder_refit_tokens is None
    # the last evaluation follows the refit, once: no step evaluated twice
    assert h_refit["step"] == [3, 6] and h_plain["step"] == [3, 6]
    assert h_refit["fvu"][0] == h_plain["fvu"][0]  # the same training up to the refit
    assert h_refit["fvu"][-1] < 0.95 * h_plain["fvu"][-1]
    norms = refit.W_dec.detach().norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)
    cfg = (tmp_path / "refit" / "cfg.json").read_text()
    assert '"decoder_rows_unit_norm": false' in cfg
    assert '"decoder_rows_unit_norm": true' in (tmp_path / "plain" / "cfg.json").read_text()
    loaded = TopKSae.load(tmp_path / "refit")
    torch.testing.assert_close(loaded.W_dec, refit.W_dec)


def test_the_refit_sees_each_training_token_once_over_epochs(tmp_path) -> None:
    store = _store(tmp_path, n=3000)
    _sae, history = _train(store, tmp_path, "two", epochs=2)
    assert history.decoder_refit_tokens == history.n_train_tokens


def test_above_the_latent_cap_there_is_no_refit(tmp_path) -> None:
    store = _store(tmp_path, n=2000)
    sae, history = _train(store, tmp_path, "capped", decoder_refit_max_latents=32)
    assert history.decoder_refit_tokens is None
    norms = sae.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_the_refit_on_cuda_matches_the_cpu_refit() -> None:
    torch.manual_seed(0)
    x = torch.randn(4096, 32) * 2 + 0.5
    cpu = TopKSae(n_latents=256, n_inputs=32, k=8, seed=0)
    gpu = TopKSae(n_latents=256, n_inputs=32, k=8, seed=0, device="cuda")
    refit_decoder_(cpu, x.split(1024))
    refit_decoder_(gpu, x.cuda().split(1024))
    torch.testing.assert_close(gpu.W_dec.cpu(), cpu.W_dec, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(gpu.b_dec.cpu(), cpu.b_dec, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("at_poll", [75, 150, 220])
def test_a_stop_during_the_refit_passes_resumes_to_the_same_sae(synthetic_store, tmp_path,
                                                                at_poll) -> None:
    """A stop in the decoder refit's pass (75), the encoder refit's (150) or the second decoder
    refit's (220) checkpoints the trained SAE, not a half-refit one."""
    from harness.core.training import LockstepMember, TrainingInterrupted

    config = SaeTrainingConfig(epochs=3, batch_size=256, lr=3e-3, progress=False,
                               finish_tokens=10**9, encoder_refit=True)

    def run(stop=None, checkpoint=None):
        sae = TopKSae(64, 16, 4, seed=3)
        member = LockstepMember(sae=sae, config=config, checkpoint_path=checkpoint, save=False)
        history = SaeTrainer.train_lockstep(LocalStore(synthetic_store), "syn", "synthetic",
                                            [member], stop=stop)[0].history
        return sae, history

    plain_sae, plain = run()
    checkpoint = tmp_path / "ck.pt"
    # 69 steps poll 69 times, then each of the finish's 7 passes 23 times
    polls = iter(range(1, 10_000))
    with pytest.raises(TrainingInterrupted) as info:
        run(stop=lambda: "SIGTERM" if next(polls) == at_poll else None, checkpoint=checkpoint)
    assert info.value.checkpoints == {str(checkpoint): 69}
    sae, resumed = run(checkpoint=checkpoint)
    assert resumed.resumed_from_step == 69
    assert resumed.decoder_refit_tokens == plain.decoder_refit_tokens == plain.n_train_tokens
    assert resumed.encoder_refit_tokens == plain.encoder_refit_tokens == plain.n_train_tokens
    torch.testing.assert_close(sae.W_dec, plain_sae.W_dec)
    torch.testing.assert_close(sae.enc_weight, plain_sae.enc_weight)
    assert resumed.fvu[-1] == pytest.approx(plain.fvu[-1], abs=1e-6)


@pytest.mark.parametrize("change", ["format", "history"])
def test_a_checkpoint_of_another_format_is_refused_by_name(synthetic_store, tmp_path,
                                                            change) -> None:
    """A checkpoint another version wrote (another format, or a history without a field this
    version keeps) is refused with its path and what to do, not misread."""
    from harness.core.training import LockstepMember, TrainingInterrupted

    config = SaeTrainingConfig(epochs=2, batch_size=256, lr=3e-3, progress=False)
    checkpoint = tmp_path / "ck.pt"

    def member() -> LockstepMember:
        return LockstepMember(sae=TopKSae(64, 16, 4, seed=3), config=config,
                              checkpoint_path=checkpoint, save=False)

    with pytest.raises(TrainingInterrupted):
        SaeTrainer.train_lockstep(LocalStore(synthetic_store), "syn", "synthetic", [member()],
                                  stop=lambda: "SIGTERM")
    state = torch.load(checkpoint, weights_only=True)
    if change == "format":
        state["format"] = 99
    else:
        del state["history"]["fvu"]
    torch.save(state, checkpoint)
    with pytest.raises(ValueError, match="delete it to train this run from the start") as info:
        SaeTrainer.train_lockstep(LocalStore(synthetic_store), "syn", "synthetic", [member()])
    assert str(checkpoint) in str(info.value)
    assert ("format 99" if change == "format" else "'fvu'") in str(info.value)


@pytest.mark.parametrize(("width", "zeros"), [(40, 0.7), (200, 0.1)])  # pairs; sparse @ dense
def test_the_sums_match_dense_products_with_zero_codes_dropped(width: int, zeros: float) -> None:
    gen = torch.Generator().manual_seed(0)
    n, d, batch = 300, 16, 64
    indices = torch.stack([torch.randperm(n, generator=gen)[:width] for _ in range(batch)])
    values = torch.rand(batch, width, generator=gen) * (torch.rand(batch, width,
                                                                   generator=gen) > zeros)
    x = torch.randn(batch, d, generator=gen)
    sums = DecoderRefit(n, d, torch.device("cpu"))
    sums.add(x, values, indices)
    z = torch.zeros(batch, n + 1).scatter_(1, indices, values)
    z[:, n] = 1.0  # the output bias's column
    upper = sums.gram.view(n + 1, n + 1)
    gram = upper + upper.T - torch.diag(upper.diagonal())
    torch.testing.assert_close(gram, z.T @ z)
    torch.testing.assert_close(sums.cross, z.T @ x)
