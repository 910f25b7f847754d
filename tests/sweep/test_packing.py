import subprocess
import sys
from pathlib import Path

import pytest
from spaces import tiny_space, write_space

from harness.core.runtime.footprint import training_bytes
from harness.sweep.devices import DeviceError, worker_slots
from harness.sweep.packing import check_packing, largest_trial
from harness.sweep.space import load_space

GiB = 1 << 30


def _loaded(tmp_path: Path, store: Path, **sections):
    return load_space(write_space(tmp_path / "s.yaml", tiny_space(store, tmp_path / "r",
                                                                  **sections)))


def test_the_largest_trial_takes_every_maximum(synthetic_store, tmp_path):
    loaded = _loaded(tmp_path, synthetic_store, params={
        "expansion": {"type": "categorical", "choices": [2, 64]},
        "k": {"type": "int", "low": 2, "high": 8},
        "activation": {"type": "categorical", "choices": ["topk", "batchtopk"]},
        "lr": 1e-3, "max_eval_tokens": {"type": "categorical", "choices": [1024, 4096]}},
        lockstep=1)
    shape, size = largest_trial(loaded)
    assert (shape.d, shape.n_latents, shape.k, shape.batch_size, shape.eval_tokens) == (
        16, 1024, 32, 256, 4096)  # BatchTopK keeps up to 4k candidates per token
    assert shape.refit and size == training_bytes(shape)


def test_relu_and_jumprelu_count_every_latent_and_a_dense_step(synthetic_store, tmp_path):
    loaded = _loaded(tmp_path, synthetic_store, params={
        "expansion": 8, "lr": 1e-3, "l1_lambda": 0.01, "l0_lambda": 0.001,
        "activation": {"type": "categorical", "choices": ["relu", "jumprelu"]}})
    shape, size = largest_trial(loaded)
    assert (shape.n_latents, shape.k, shape.sparse_backward) == (128, 128, False)
    topk = largest_trial(_loaded(tmp_path, synthetic_store, params={
        "expansion": 8, "lr": 1e-3, "k": 4}))[1]
    assert size > topk


def test_lockstep_packs_count_each_member(synthetic_store, tmp_path):
    one = largest_trial(_loaded(tmp_path, synthetic_store))[1]
    params = {"expansion": {"type": "categorical", "choices": [2, 4]}, "k": 4,
              "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    shape, packed = largest_trial(_loaded(tmp_path, synthetic_store, lockstep=3, params=params))
    assert packed == training_bytes(shape, members=3) > one


def test_gpus_that_cannot_hold_their_workers_are_refused(synthetic_store, tmp_path):
    loaded = _loaded(tmp_path, synthetic_store)
    trial = largest_trial(loaded)[1]
    slots = worker_slots(["cuda:0", "cuda:1"], 1, gpu_count=2, per_device=3)
    sizes = {"cuda:0": 100 * GiB, "cuda:1": 1 * GiB}  # what torch reports for each GPU
    with pytest.raises(DeviceError) as info:
        check_packing(slots, loaded, lambda label: ("Test GPU", sizes[label]))
    message = str(info.value)
    assert message.startswith("cuda:1 (Test GPU, 1.0 GiB): 3 worker(s)")
    assert "n_latents 64, d 16" in message and "use --trials-per-device 1 or fewer" in message
    check_packing(slots, loaded, lambda label: ("Test GPU", 100 * GiB))  # both fit
    check_packing(worker_slots(None, 4, gpu_count=0), loaded, lambda label: pytest.fail(label))
    assert trial < GiB


def test_workers_and_trials_per_device_together_are_refused(synthetic_store, tmp_path):
    path = write_space(tmp_path / "s.yaml", tiny_space(synthetic_store, tmp_path / "r"))
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "--workers", "2",
                           "--trials-per-device", "2"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--workers and --trials-per-device: give one" in proc.stderr
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_host_memory_is_checked_for_cpu_and_gpu_workers_alike(synthetic_store, tmp_path):
    """A GPU worker's host share holds its batches, not the SAE (which lives on the GPU): it
    needs less than a CPU worker of the same trial, and is refused below that."""
    from harness.sweep.devices import WorkerSlot
    from harness.sweep.packing import WORKER_BASELINE, check_host_memory

    loaded = _loaded(tmp_path, synthetic_store, params={"expansion": 64, "k": 8, "lr": 1e-3})

    def least(device: str) -> int:
        lo, hi = WORKER_BASELINE, 4 * GiB
        while hi - lo > 1 << 16:  # the smallest share the check accepts
            mid = (lo + hi) // 2
            try:
                check_host_memory([WorkerSlot(device, device)], loaded, mid)
                hi = mid
            except DeviceError:
                lo = mid
        return hi

    cpu, gpu = least("cpu"), least("cuda:0")
    assert WORKER_BASELINE < gpu < cpu
    with pytest.raises(DeviceError, match="memory: each of the 1 worker"):
        check_host_memory([WorkerSlot("cuda:0", "cuda:0")], loaded, gpu - (1 << 17))
