import json
import re
from pathlib import Path

import pytest
import torch
from mi_crow_layout import write_padded_run
from wandb_records import run_contents

from harness import (
    SaeTrainer,
    SaeTrainingConfig,
    StopTraining,
    TopKSae,
    TrainingDiverged,
    feature_recovery,
)
from harness.core.runtime.cpu_bf16 import cpu_has_bf16
from harness.core.store import LocalStore
from harness.core.training import SaveFailed
from harness.core.training.optim import lr_factor
from harness.data.synthetic import SyntheticSpec, load_ground_truth, write_synthetic_store

FAST = dict(epochs=2, batch_size=256, lr=1e-3, progress=False)


def test_learns_ground_truth_features(tmp_path: Path):
    """d=64, 256 true features, ~5 active per token: a real check of learning."""
    spec = SyntheticSpec(d=64, n_features=256, mean_active=5, n_tokens=60_000,
                         magnitude="exponential", magnitude_low=0.0, magnitude_high=1.0,
                         frequency_decay=0.75, seed=0)
    directions = write_synthetic_store(tmp_path, "gt", spec)
    assert torch.equal(load_ground_truth(tmp_path, "gt"), directions)  # kept with the store
    torch.manual_seed(1)
    sae = TopKSae(n_latents=512, n_inputs=64, k=8)
    history = SaeTrainer(sae).train(
        store=tmp_path, run_id="gt", layer_signature="synthetic",
        config=SaeTrainingConfig(epochs=5, batch_size=512, lr=2e-3, progress=False), save=False)
    assert history["r2"][-1] >= 0.9
    rec = feature_recovery(directions, sae.W_dec.detach(), threshold=0.9)
    assert rec.recovery >= 0.9, rec
    assert 7.0 <= history["l0"][-1] <= 8.0


def test_seed_api_returns_real_history_and_saves_the_run(synthetic_store: Path):
    sae = TopKSae(n_latents=64, n_inputs=16, k=4)
    config = SaeTrainingConfig(epochs=2, batch_size=256, lr=1e-3, l1_lambda=1e-4,
                               use_wandb=False, wandb_project="p", wandb_run_name="n",
                               eval_every=5, progress=False)
    history = SaeTrainer(sae).train(store=LocalStore(synthetic_store), run_id="syn",
                                    layer_signature="synthetic", config=config,
                                    training_run_id="seed_api")
    for key in ("loss", "r2", "l0", "dead_features", "step", "tokens", "fvu"):
        assert len(history[key]) == history.n_evals > 2
    assert all(0 < v <= 4 for v in history["l0"])  # a real mean L0, bounded by k
    assert all(isinstance(v, int) for v in history["dead_features"])  # a count
    assert history["r2"][-1] == pytest.approx(1 - history["fvu"][-1])
    assert history["tokens"][-1] == 2 * history.n_train_tokens
    assert history["r2"][-1] > history["r2"][0]
    run = synthetic_store / "runs" / "seed_api"
    for name in ("sae_weights.safetensors", "cfg.json", "training_config.json", "history.json",
                 "meta.json"):
        assert (run / name).exists(), name
    meta = json.loads((run / "meta.json").read_text())
    assert meta["activation_run"] == "syn" and meta["seed"] == 0
    assert meta["final"]["r2"] == pytest.approx(history["r2"][-1])
    assert meta["dead_window_tokens"] == history.dead_window_tokens == history.n_train_tokens
    assert json.loads((run / "history.json").read_text())["l0"] == history["l0"]
    loaded = TopKSae.load(run)
    assert torch.equal(loaded.W_dec, sae.W_dec)
    # a read-only mapping, as users of the seed's dict-like history expect
    assert history.get("r2") is history["r2"] and history.get("nope") is None
    assert list(history.keys())[:3] == ["step", "epoch", "tokens"] and "loss" in history
    assert dict(history.items())["l0"] == history["l0"]
    with pytest.raises(TypeError):
        history["r2"] = []  # type: ignore[index]


def test_a_run_that_cannot_be_saved_keeps_its_weights_elsewhere(synthetic_store: Path,
                                                               tmp_path: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    sae = TopKSae(n_latents=32, n_inputs=16, k=4, seed=1)
    config = SaeTrainingConfig(epochs=1, batch_size=256, lr=1e-3, progress=False)
    with pytest.raises(SaveFailed, match=f"could not save to {blocker / 'run'}") as info:
        SaeTrainer(sae).train(store=LocalStore(synthetic_store), run_id="syn",
                              layer_signature="synthetic", config=config,
                              save_dir=blocker / "run")
    kept = info.value.fallback
    assert kept is not None and f"saved to {kept} instead" in str(info.value)
    assert torch.equal(TopKSae.load(kept).W_dec, sae.W_dec.detach().cpu())


def test_huge_lr_raises_training_diverged_with_step(synthetic_store: Path):
    sae = TopKSae(64, 16, 4)
    with pytest.raises(TrainingDiverged) as info:
        SaeTrainer(sae).train(store=synthetic_store, run_id="syn", layer_signature="synthetic",
                              config=SaeTrainingConfig(**{**FAST, "lr": 10.0}),
                              training_run_id="diverged")
    assert info.value.step >= 1
    assert "step" in str(info.value)
    assert not (synthetic_store / "runs" / "diverged").exists()  # nothing half-written


def test_divergence_read_back_late_names_the_step_it_began(synthetic_store: Path):
    """host_sync_every=7 reads the loss every 7th step, yet reports the same first bad step."""
    steps = []
    for every in (1, 7):
        with pytest.raises(TrainingDiverged) as info:
            SaeTrainer(TopKSae(64, 16, 4, seed=0)).train(
                store=synthetic_store, run_id="syn", layer_signature="synthetic",
                config=SaeTrainingConfig(**{**FAST, "lr": 10.0, "host_sync_every": every}),
                save=False)
        steps.append(info.value.step)
    assert steps[0] == steps[1] >= 1


def test_run_dependent_defaults_resolve_per_device():
    cfg = SaeTrainingConfig()
    cpu = cfg.resolved_for(torch.device("cpu"), 512, 64, 100)
    cuda = cfg.resolved_for(torch.device("cuda"), 512, 64, 100)
    # bf16 on a CPU only where it multiplies bf16 natively (harness.core.runtime.cpu_bf16)
    assert (cpu.autocast_bf16, cpu.host_sync_every) == (cpu_has_bf16(), 1)
    assert (cuda.autocast_bf16, cuda.host_sync_every) == (True, 16)
    assert cpu.lr == cuda.lr == cfg.resolved_lr(512, 64, 100)
    kept = SaeTrainingConfig(autocast_bf16=False, host_sync_every=4, lr=1e-3).resolved_for(
        torch.device("cuda"), 512, 64, 100)
    assert (kept.autocast_bf16, kept.host_sync_every, kept.lr) == (False, 4, 1e-3)
    with pytest.raises(ValueError, match="host_sync_every"):
        SaeTrainingConfig(host_sync_every=0)


def test_nan_input_stops_with_training_diverged(tmp_path: Path):
    sae = TopKSae(16, 4, 2)
    with torch.no_grad():
        sae.W_enc.fill_(float("nan"))
    LocalStore(tmp_path).put_activations("r", "L", torch.randn(2000, 4))
    with pytest.raises(TrainingDiverged, match="non-finite"):
        SaeTrainer(sae).train(store=tmp_path, run_id="r", layer_signature="L",
                              config=SaeTrainingConfig(b_dec_init="zeros", **FAST), save=False)


def test_callback_can_stop_training_early(synthetic_store: Path):
    seen = []

    def stop_after_two(result):
        seen.append(result.step)
        if len(seen) == 2:
            raise StopTraining(f"enough at step {result.step}")

    history = SaeTrainer(TopKSae(32, 16, 4)).train(
        store=synthetic_store, run_id="syn", layer_signature="synthetic",
        config=SaeTrainingConfig(eval_every=3, **FAST), callbacks=[stop_after_two], save=False)
    assert history["step"] == [3, 6] and history.stop_reason == "enough at step 6"


def test_dead_features_counted_on_a_planted_case(synthetic_store: Path):
    sae = TopKSae(32, 16, 4, seed=0)
    with torch.no_grad():
        sae.b_enc[:10] = -1e6  # these 10 latents can never reach the top k
    history = SaeTrainer(sae).train(
        store=synthetic_store, run_id="syn", layer_signature="synthetic",
        config=SaeTrainingConfig(dead_window_tokens=1000, auxk_alpha=0.0, **FAST), save=False)
    assert history["dead_features"][-1] >= 10
    out = sae(torch.randn(100, 16))
    assert not (out.top_indices < 10).any()


def test_unknown_config_field_and_bad_values_are_errors():
    with pytest.raises(ValueError, match=r"unknown SaeTrainingConfig field\(s\) \['epoch'\]"):
        SaeTrainingConfig.from_dict({"epoch": 3})
    with pytest.raises(TypeError):
        SaeTrainingConfig(epoch=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="lr must be > 0"):
        SaeTrainingConfig(lr=0)
    for bad, message in (({"holdout_fraction": 1.5}, "holdout_fraction must be in"),
                         ({"dtype": "float33"}, "dtype must be one of"),
                         ({"device": "tpu"}, "device must be cpu, cuda")):
        with pytest.raises(ValueError, match=message):
            SaeTrainingConfig(**bad)


def test_wrong_layer_or_width_is_an_error(synthetic_store: Path):
    from harness.core.store import StoreError

    with pytest.raises(StoreError, match="layers present"):
        SaeTrainer(TopKSae(32, 16, 4)).train(store=synthetic_store, run_id="syn",
                                             layer_signature="nope", config=SaeTrainingConfig())
    with pytest.raises(ValueError, match="n_inputs=8"):
        SaeTrainer(TopKSae(32, 8, 4)).train(store=synthetic_store, run_id="syn",
                                            layer_signature="synthetic")


def test_trains_on_a_mi_crow_store(tmp_path: Path):
    real = write_padded_run(tmp_path, "mc", "transformer.h.0.mlp", n_batches=200, d=8)
    history = SaeTrainer(TopKSae(32, 8, 4)).train(
        store=tmp_path, run_id="mc", layer_signature="transformer.h.0.mlp",
        config=SaeTrainingConfig(**{**FAST, "batch_size": 64}), training_run_id="sae_mc")
    assert history.n_train_tokens + history.n_eval_tokens <= real
    assert history["r2"][-1] > 0.0  # padding (1e4 sentinels) would wreck this
    meta = json.loads((tmp_path / "runs" / "sae_mc" / "meta.json").read_text())
    assert meta["store_layout"] == "mi_crow"


def test_wandb_offline_run_has_config_history_and_summary(synthetic_store: Path, tmp_path: Path):
    history = SaeTrainer(TopKSae(32, 16, 4)).train(
        store=synthetic_store, run_id="syn", layer_signature="synthetic",
        config=SaeTrainingConfig(use_wandb=True, wandb_mode="offline", wandb_project="saesweep",
                                 wandb_run_name="offline_test", wandb_dir=str(tmp_path), **FAST),
        save=False)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logs = list(runs[0].glob("run-*.wandb"))  # the log `wandb sync` uploads
    assert len(logs) == 1
    contents = run_contents(logs[0])
    assert contents["run"].display_name == "offline_test"
    assert contents["config"]["lr"] == FAST["lr"] and contents["config"]["k"] == 4
    assert len(contents["history"]) == history.n_evals
    assert [row["r2"] for row in contents["history"]] == pytest.approx(history["r2"])
    assert contents["summary"]["r2"] == pytest.approx(history["r2"][-1])
    assert contents["summary"]["status"] == "finished"


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_streaming_a_store_larger_than_the_cache(tmp_path: Path):
    """2 epochs over a ~195 MiB store with an 8 MiB in-memory limit: RSS must not grow with
    epochs nor with the store (it is streamed, never loaded). What remains is a few shard-sized
    buffers, which the allocator may keep. Wide tokens and few latents: the bytes, not the
    training, are what is tested."""
    spec = SyntheticSpec(d=256, n_features=64, mean_active=4, n_tokens=200_000, seed=3)
    write_synthetic_store(tmp_path, "big", spec, shard_tokens=2500)
    write_synthetic_store(tmp_path, "small", SyntheticSpec(d=256, n_tokens=15_000),
                          shard_tokens=2500)
    store_mib = 200_000 * 256 * 4 / 2**20
    # without the finish, whose batches the loop keeps (up to 256 MiB, by design), and in float32
    # (bf16 autocast's scratch added 6 MiB here): the stream's memory is what is tested
    cfg = SaeTrainingConfig(epochs=2, batch_size=1024, lr=1e-3, in_memory_bytes=8 << 20,
                            shuffle_buffer_tokens=8192, progress=False, decoder_refit=False,
                            autocast_bf16=False)
    # pay one-time costs (thread pools, kernels, allocator pools) on a small store first
    SaeTrainer(TopKSae(32, 256, 4, seed=0)).train(store=tmp_path, run_id="small",
                                                  layer_signature="synthetic", config=cfg,
                                                  save=False)
    seen: list[float] = []
    before = _rss_mib()
    history = SaeTrainer(TopKSae(32, 256, 4, seed=0)).train(
        store=tmp_path, run_id="big", layer_signature="synthetic", config=cfg,
        callbacks=[lambda r: seen.append(_rss_mib())], save=False)
    assert len(seen) == 2 and history["tokens"][-1] == 2 * history.n_train_tokens
    assert max(seen) - min(seen) < 16, seen  # flat across epochs
    # a third of the store: loading it would add all 195 MiB; what the allocator keeps of the
    # streamed buffers varies from run to run (24-37 MiB in six runs of this test's body)
    assert max(seen) - before < store_mib / 3, (before, seen, store_mib)


def test_lr_schedule_warms_up_holds_and_decays_to_zero():
    factors = [lr_factor(s, warmup_steps=4, total_steps=20, decay_fraction=0.25)
               for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:15] == [1.0] * 11
    assert factors[15:] == [1.0, 0.8, 0.6, 0.4, 0.2]  # reaches 0 one step after the last
    assert [lr_factor(s, 0, 10, 0.0) for s in range(10)] == [1.0] * 10


def test_token_budget_stops_mid_epoch_and_evaluates_at_the_end(synthetic_store: Path):
    config = SaeTrainingConfig(epochs=5, batch_size=256, lr=1e-3, max_train_tokens=3000,
                               lr_decay_fraction=0.5, progress=False)
    history = SaeTrainer(TopKSae(32, 16, 4)).train(
        store=synthetic_store, run_id="syn", layer_signature="synthetic", config=config,
        save=False)
    assert history["step"][-1] == 12  # ceil(3000 / 256) steps, not 5 epochs
    assert history["tokens"][-1] == 12 * 256
    assert history["lr"][-1] == 0.0  # the schedule reached 0 after the last step
    assert config.planned_tokens(history.n_train_tokens) == 12 * 256  # what it trained
    with pytest.raises(ValueError, match="max_train_tokens"):
        SaeTrainingConfig(max_train_tokens=0)
    with pytest.raises(ValueError, match="lr_decay_fraction"):
        SaeTrainingConfig(lr_decay_fraction=1.5)


def test_batchtopk_trains_through_the_seed_api_with_inference_l0_near_k(synthetic_store: Path):
    sae = TopKSae(64, 16, 4, seed=0, activation="batchtopk")
    history = SaeTrainer(sae).train(
        store=synthetic_store, run_id="syn", layer_signature="synthetic",
        config=SaeTrainingConfig(epochs=3, batch_size=256, lr=3e-3, progress=False),
        save=False)
    assert history["r2"][-1] > 0.5
    assert float(sae.threshold) > 0
    assert 3.0 <= history["l0"][-1] <= 5.0  # held out, with the learned threshold


def test_a_stopped_run_resumes_from_its_checkpoint_as_if_never_stopped(synthetic_store: Path,
                                                                      tmp_path: Path):
    from harness.core.training import LockstepMember, TrainingInterrupted

    config = SaeTrainingConfig(epochs=3, batch_size=256, lr=3e-3, eval_every=7,
                               progress=False, checkpoint_every=5)

    def run(stop=None, checkpoint=None):
        member = LockstepMember(sae=TopKSae(64, 16, 4, seed=3), config=config,
                                checkpoint_path=checkpoint, save=False)
        return SaeTrainer.train_lockstep(LocalStore(synthetic_store), "syn", "synthetic",
                                         [member], stop=stop)[0].history

    uninterrupted = run()
    checkpoint = tmp_path / "ck.pt"
    polls = iter(range(1, 10_000))
    with pytest.raises(TrainingInterrupted) as info:  # a SIGTERM at step 40 of 69
        run(stop=lambda: "SIGTERM" if next(polls) == 40 else None, checkpoint=checkpoint)
    assert info.value.checkpoints == {str(checkpoint): 40} and checkpoint.exists()
    resumed = run(checkpoint=checkpoint)
    assert resumed.resumed_from_step == 40 and uninterrupted.resumed_from_step is None
    assert resumed.step == uninterrupted.step  # the history before the stop came back too
    assert resumed.r2[-1] == pytest.approx(uninterrupted.r2[-1], abs=1e-6)
    assert not checkpoint.exists()  # the run is over: its checkpoint goes


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_steady_state_steps_never_wait_for_the_gpu(synthetic_store: Path, monkeypatch):
    """Between its reads (every host_sync_every steps) a CUDA step queues work and returns:
    any synchronising call inside one raises under torch's sync debug mode. The production path:
    the sparse backward (its CSR product needs no coalescing) under bf16 autocast."""
    import harness.core.training.run as train_module

    step = train_module.MemberRun.step
    steady = []

    def checked(run, x, epoch, index=0):
        quiet = run.step_count % run.cfg.host_sync_every != 0 and run.dead_now is not None
        steady.append(quiet)
        torch.cuda.set_sync_debug_mode("error" if quiet else "default")
        try:
            step(run, x, epoch, index)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(train_module.MemberRun, "step", checked)
    history = SaeTrainer(TopKSae(64, 16, 4, seed=0)).train(
        store=synthetic_store, run_id="syn", layer_signature="synthetic",
        config=SaeTrainingConfig(**FAST, device="cuda", dead_window_tokens=512), save=False)
    assert history.n_evals and steady  # (sparse_backward and autocast_bf16 are the defaults)
    assert sum(steady) >= 30 and history["r2"][-1] > 0.5


def test_the_decoder_rows_learn_at_decoder_lr_scale_times_the_rate():
    from harness.core.training.optim import adam as _adam

    sae = TopKSae(32, 16, 4)
    opt = _adam(sae, SaeTrainingConfig(lr=1e-3, decoder_lr_scale=4.0))
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[1]["lr"] == 4e-3
    assert opt.param_groups[1]["params"] == [sae.W_dec]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {
        id(p) for p in sae.parameters() if p is not sae.W_dec}
    with pytest.raises(ValueError, match="decoder_lr_scale"):
        SaeTrainingConfig(decoder_lr_scale=0)


def test_the_default_warm_up_is_a_tenth_of_the_planned_steps():
    cpu = torch.device("cpu")
    assert SaeTrainingConfig().resolved_for(cpu, 64, 16, 245).lr_warmup_steps == 24
    assert SaeTrainingConfig(lr_warmup_steps=0).resolved_for(cpu, 64, 16, 245).lr_warmup_steps == 0
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        SaeTrainingConfig(lr_warmup_steps=-1)


@pytest.mark.parametrize(("tokens", "says"), [
    (torch.randn(10, 16), "only 1 held-out token(s) of 10"),
    (torch.ones(4000, 16), "the held-out activations have zero variance"),
])
def test_a_store_whose_held_out_split_cannot_be_measured_is_refused_before_training(
        tmp_path, tokens, says):
    """R² on 10 tokens would be -inf (and -Infinity in history.json): the seed API refuses such
    a store as the sweep does, and saves nothing."""
    from harness.core.store import StoreError

    store = LocalStore(tmp_path / "store")
    store.put_activations("small", "L", tokens)
    with pytest.raises(StoreError, match=re.escape(says)):
        SaeTrainer(TopKSae(32, 16, 4)).train(store=store, run_id="small", layer_signature="L",
                                             config=SaeTrainingConfig(progress=False))
    assert not (tmp_path / "store" / "runs").exists()
