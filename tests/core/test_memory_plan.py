"""A run's host memory planned in bytes (harness.core.runtime.memory_plan): the plan's sizes, the
refusal of a budget too small for one batch, buffers in the store's dtype that hold no more than
the run trains, and a measured peak within a small planted budget."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from scripts_run import sweep_here
from spaces import one_trial, write_space

from harness import LocalStore, SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.loader import READ_ROWS, ActivationLoader, LoaderConfig
from harness.core.runtime.memory_plan import EVAL_BYTES, MemoryBudgetError, plan_memory

MiB = 1 << 20


def _plan(budget: int, **overrides):
    args = dict(budget=budget, d=2048, itemsize=2, n_train=2_000_000, n_heldout=100_000,
                planned_tokens=200_000, batch_size=4096, shard_tokens=READ_ROWS,
                max_eval_tokens=65536, shuffle_buffer_tokens=1 << 20, in_memory_bytes=4 << 30,
                stash_wanted=128 * MiB, model_bytes=800 * MiB, host_device=True)
    return plan_memory(**{**args, **overrides})


def test_the_plan_fits_the_budget_and_no_buffer_outgrows_the_run():
    roomy = _plan(16 << 30)
    assert not roomy.in_memory and roomy.buffer_tokens <= 200_000  # not the 2M-token split
    assert roomy.eval_tokens * roomy.row_bytes <= EVAL_BYTES
    for budget in (1400 * MiB, 1600 * MiB, 2 << 30):
        plan = _plan(budget)
        assert plan.total <= budget, (budget, plan)
    assert _plan(1400 * MiB).buffer_tokens < roomy.buffer_tokens  # the budget binds
    # a run of several epochs over a split that fits: read once, held in memory
    whole = _plan(16 << 30, n_train=100_000, planned_tokens=300_000)
    assert whole.in_memory and whole.buffer_tokens == 100_000
    # freed-block reuse only where the budget also holds what it keeps
    assert _plan(16 << 30, reuse_bytes=64 * MiB).reuse_bytes == 64 * MiB
    assert _plan(1400 * MiB, reuse_bytes=64 * MiB).reuse_bytes == 0


def test_a_budget_too_small_for_one_batch_is_refused_naming_what_fits():
    with pytest.raises(MemoryBudgetError, match=r"memory_budget 0\.50 GiB cannot hold this run: "
                                                r"it needs at least 1\.11 GiB"):
        _plan(512 * MiB)


def test_buffers_keep_the_stores_dtype_and_a_short_run_reads_only_what_it_trains(tmp_path):
    store = LocalStore(tmp_path)
    store.put_activations("r", "L", torch.randn(100_000, 32), dtype=torch.float16,
                          shard_tokens=20_000)
    source = store.open("r", "L")
    pieces: list[int] = []
    read = source.read_piece

    def counted(i, start, stop):
        piece = read(i, start, stop)
        pieces.append(piece.shape[0])
        return piece

    source.read_piece = counted
    loader = ActivationLoader(source, LoaderConfig(batch_size=1000, shuffle_buffer_tokens=5000,
                                                   in_memory_bytes=0))
    assert loader.eval_tokens().dtype == torch.float16  # held as stored
    pieces.clear()
    batches = loader.train_batches(0)
    first = next(batches)
    assert first.dtype == torch.float32  # converted a batch at a time
    # the first batch needs one buffer: 5,000 training rows, so about 5,000 / 0.95 rows read
    assert sum(pieces) <= 5000 / 0.95 + READ_ROWS
    batches.close()
    # a split held in memory is held as stored too, and converted a batch at a time
    whole = ActivationLoader(source, LoaderConfig(batch_size=1000, in_memory_bytes=1 << 30))
    assert next(iter(whole.train_batches(0))).dtype == torch.float32
    assert whole._cache is not None and whole._cache.dtype == torch.float16


def test_a_seed_api_run_whose_budget_cannot_hold_it_is_refused_before_anything(tmp_path,
                                                                             synthetic_store):
    cfg = SaeTrainingConfig(epochs=1, batch_size=256, progress=False, memory_budget=1 << 20)
    with pytest.raises(MemoryBudgetError, match="memory_budget 0.00 GiB cannot hold this run"):
        SaeTrainer(TopKSae(64, 16, 4)).train(store=synthetic_store, run_id="syn",
                                             layer_signature="synthetic", config=cfg,
                                             save_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_sweep_whose_workers_cannot_hold_a_trial_is_refused(synthetic_store, tmp_path,
                                                              capsys):
    results = tmp_path / "results"
    space = one_trial(synthetic_store, results,
                      training={"epochs": 1, "batch_size": 256, "memory_budget": 1 << 20})
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "memory: each of the 1 worker(s) gets 0.00 GiB" in proc.stderr
    assert not results.exists()


PEAK = textwrap.dedent("""
    import json, sys, threading, time
    import torch
    from harness import SaeTrainer, SaeTrainingConfig, TopKSae
    from harness.core.runtime.memory_plan import process_memory

    torch.set_num_threads(1)
    peak, done = [0], []

    def sample():
        while not done:
            peak[0] = max(peak[0], process_memory())
            time.sleep(0.005)

    budget = process_memory() + int(sys.argv[2])
    threading.Thread(target=sample, daemon=True).start()
    cfg = SaeTrainingConfig(epochs=1, batch_size=1024, progress=False, memory_budget=budget,
                            max_train_tokens=80_000)
    history = SaeTrainer(TopKSae(1024, 256, 16)).train(
        store=sys.argv[1], run_id="wide", layer_signature="L", config=cfg, save=False)
    done.append(1)
    print(json.dumps({"peak": peak[0], "budget": budget, "r2": history["r2"][-1]}))
""")


def test_a_runs_measured_peak_stays_within_a_small_planted_budget(tmp_path):
    """The process's own memory plus 96 MiB for an 80k-token run over a 100 MB store: the plan
    sizes its buffers to fit, and the sampled peak stays within."""
    store = LocalStore(tmp_path)
    store.put_activations("wide", "L", torch.randn(200_000, 256) * 0.5 + 0.1,
                          dtype=torch.float16, shard_tokens=50_000)
    proc = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path), str(96 * MiB)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["peak"] <= got["budget"], got
    assert got["r2"] > 0
