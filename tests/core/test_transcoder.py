"""Transcoders: aligned pairs in the store and the loader, training through the one trainer,
the least-squares finish onto the target, and the saved folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness import LocalStore, SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.activations import ACTIVATIONS
from harness.core.loader import ActivationLoader, LoaderConfig
from harness.core.sae import SparseAutoencoder
from harness.core.store import StoreError
from harness.core.training.refit import refit_decoder_
from harness.data.synthetic import TARGET_SUFFIX, SyntheticSpec, write_synthetic_store
from tests.conftest import indexed_tokens

PLANTED = SyntheticSpec(d=64, n_features=128, mean_active=4, d_out=48, n_tokens=20_000, seed=1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs "plain" (y = D codes(x) + noise) and "linear" (plus a linear map of x)."""
    base = tmp_path_factory.mktemp("pairs")
    write_synthetic_store(base, "plain", PLANTED, shard_tokens=5000)
    write_synthetic_store(base, "linear", SyntheticSpec(**{**PLANTED.__dict__,
                                                           "target_linear": 1.0}),
                          shard_tokens=5000)
    return base


def _train(base: Path, run: str, skip: bool = False, epochs: int = 5,
           activation: str = "topk") -> dict:
    sae = TopKSae(256, 64, 4, n_outputs=48, skip=skip, activation=activation, seed=0)
    return SaeTrainer(sae).train(
        store=base, run_id=run, layer_signature="synthetic",
        target_layer_signature="synthetic" + TARGET_SUFFIX,
        config=SaeTrainingConfig(epochs=epochs, batch_size=256, progress=False), save=False)


def test_a_transcoder_learns_a_planted_sparse_map(planted: Path) -> None:
    history = _train(planted, "plain")
    assert history["r2"][-1] >= 0.8  # held-out targets, never trained on
    assert 3.5 <= history["l0"][-1] <= 4.0


def test_the_skip_path_wins_where_the_target_has_a_linear_part(planted: Path) -> None:
    plain = _train(planted, "linear", epochs=3)["r2"][-1]
    skip = _train(planted, "linear", skip=True, epochs=3)["r2"][-1]
    assert skip > plain + 0.05


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_trains_as_a_transcoder_and_reloads_exactly(
        planted: Path, tmp_path: Path, activation: str) -> None:
    sae = TopKSae(128, 64, 4, n_outputs=48, skip=True, activation=activation, seed=0)
    history = SaeTrainer(sae).train(
        store=planted, run_id="linear", layer_signature="synthetic",
        target_layer_signature="synthetic" + TARGET_SUFFIX, save_dir=tmp_path / "tc",
        config=SaeTrainingConfig(epochs=1, batch_size=512, progress=False))
    assert history["r2"][-1] > 0.3
    loaded = SparseAutoencoder.load(tmp_path / "tc")
    assert (loaded.transcoder, loaded.skip, loaded.n_outputs) == (True, True, 48)
    x = LocalStore(planted).open("linear", "synthetic").read_shard(0)[:200].float()
    torch.testing.assert_close(loaded(x).reconstruction, sae(x).reconstruction)


def test_the_finish_fits_the_skip_path_by_least_squares() -> None:
    torch.manual_seed(0)
    x = torch.randn(4000, 8)
    skip = torch.randn(6, 8)
    sae = TopKSae(32, 8, 2, n_outputs=6, skip=True, seed=0)
    batch = torch.cat([x, x @ skip.T + 0.5], dim=1)
    refit_decoder_(sae, batch.split(1000))
    # the target is linear in x: the joint solve puts it all on the skip path and the bias
    torch.testing.assert_close(sae.W_skip, skip, atol=2e-2, rtol=0)
    torch.testing.assert_close(sae(x).reconstruction, x @ skip.T + 0.5, atol=2e-2, rtol=0)


@pytest.mark.parametrize("in_memory_bytes", [1 << 30, 0])  # in memory and streamed
def test_the_loader_keeps_input_and_target_rows_aligned(tmp_path: Path,
                                                        in_memory_bytes: int) -> None:
    store = LocalStore(tmp_path)
    x = indexed_tokens(3000, d=4)
    for start in range(0, 3000, 700):  # the capture's order: a shard of each layer in turn
        store.put_activations("pair", "mlp.input", x[start:start + 700])
        store.put_activations("pair", "mlp", 2 * x[start:start + 700, :3] + 1)
    source = store.open_pair("pair", "mlp.input", "mlp")
    assert (source.n_inputs, source.n_outputs, source.d) == (4, 3, 7)
    loader = ActivationLoader(source, LoaderConfig(batch_size=128, shuffle_buffer_tokens=500,
                                                   in_memory_bytes=in_memory_bytes, seed=2))
    seen = []
    for epoch in (0, 1):
        for batch in loader.train_batches(epoch):
            torch.testing.assert_close(batch[:, 4:], 2 * batch[:, :3] + 1)
            seen.append(batch[:, 0])
    held = loader.eval_tokens().float()
    torch.testing.assert_close(held[:, 4:], 2 * held[:, :3] + 1)
    trained = torch.cat(seen).long().unique()
    assert not set(trained.tolist()) & set(held[:, 0].long().tolist())


def test_a_transcoder_resumes_from_its_checkpoint_as_if_never_stopped(planted: Path,
                                                                      tmp_path: Path) -> None:
    from harness.core.training import LockstepMember, TrainingInterrupted

    config = SaeTrainingConfig(epochs=2, batch_size=512, progress=False, checkpoint_every=5)

    def run(stop=None, checkpoint=None):
        member = LockstepMember(sae=TopKSae(64, 64, 4, n_outputs=48, skip=True, seed=3),
                                config=config, checkpoint_path=checkpoint, save=False)
        return SaeTrainer.train_lockstep(
            LocalStore(planted), "linear", "synthetic", [member], stop=stop,
            target_layer_signature="synthetic" + TARGET_SUFFIX)[0].history

    uninterrupted = run()
    checkpoint = tmp_path / "ck.pt"
    polls = iter(range(1, 10_000))
    with pytest.raises(TrainingInterrupted):
        run(stop=lambda: "SIGTERM" if next(polls) == 30 else None, checkpoint=checkpoint)
    resumed = run(checkpoint=checkpoint)
    assert resumed.resumed_from_step == 30
    assert resumed.r2[-1] == pytest.approx(uninterrupted.r2[-1], abs=1e-6)


def test_misaligned_layers_and_missing_targets_are_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_activations("pair", "a", torch.randn(1000, 4), shard_tokens=500)
    store.put_activations("pair", "b", torch.randn(900, 4), shard_tokens=500)
    with pytest.raises(StoreError, match="not aligned"):
        store.open_pair("pair", "a", "b")
    with pytest.raises(ValueError, match="target_layer_signature"):
        SaeTrainer(TopKSae(8, 4, 2, n_outputs=3)).train(store=store, run_id="pair",
                                                        layer_signature="a", save=False)
    with pytest.raises(StoreError, match="layers present"):
        store.open_pair("pair", "a", "c")


def test_without_a_target_an_sae_is_unchanged() -> None:
    sae = TopKSae(16, 8, 2, seed=0)
    assert not sae.transcoder and sae.W_skip is None and sae.n_outputs == 8
    assert sae.config_dict()["apply_b_dec_to_input"] is True
    assert "d_out" not in sae.config_dict()
    batch = torch.randn(5, 8)
    assert sae.split_batch(batch)[1] is batch


def test_a_mi_crow_run_with_both_layers_is_read_as_aligned_pairs(tmp_path: Path) -> None:
    """mi_crow keeps every layer of a batch beside one attention mask: its two layers pair up,
    padding dropped from both alike."""
    from mi_crow_layout import flat, padded_batches, write_batch, write_run_meta

    write_run_meta(tmp_path, "mc", [flat("h.0.mlp.in"), flat("h.0.mlp")])
    for i, (acts, mask) in enumerate(padded_batches(5, 8, "h.0.mlp.in")):
        x = acts[flat("h.0.mlp.in")]
        write_batch(tmp_path, "mc", i, {flat("h.0.mlp.in"): x, flat("h.0.mlp"): 2 * x[..., :6]},
                    mask)
    source = LocalStore(tmp_path).open_pair("mc", "h.0.mlp.in", "h.0.mlp")
    assert (source.layout, source.n_inputs, source.n_outputs) == ("mi_crow", 8, 6)
    rows = torch.cat([source.read_shard(i) for i in range(len(source.shards))])
    assert rows.shape[0] == source.n_tokens and float(rows.abs().max()) < 1e3
    torch.testing.assert_close(rows[:, 8:], 2 * rows[:, :6])
