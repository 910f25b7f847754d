import pytest
import torch

from harness import SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.runtime.footprint import TrainingShape, training_bytes

GiB = 1 << 30


def test_the_largest_shape_of_the_gpu_issue_fits_in_40_gib():
    shape = TrainingShape(d=4096, n_latents=131072, k=64, batch_size=4096, refit=False)
    assert 16 * GiB < training_bytes(shape) < 40 * GiB  # weights, grads and Adam alone: 16 GiB


def test_each_term_grows_the_estimate():
    base = TrainingShape(d=512, n_latents=4096, k=32, batch_size=4096)
    bigger = [TrainingShape(d=512, n_latents=8192, k=32, batch_size=4096),
              TrainingShape(d=512, n_latents=4096, k=32, batch_size=8192),
              TrainingShape(d=512, n_latents=4096, k=32, batch_size=4096, autocast_bf16=False,
                            refit=False),
              TrainingShape(d=512, n_latents=4096, k=32, batch_size=4096,
                            sparse_backward=False, refit=False)]
    no_refit = TrainingShape(d=512, n_latents=4096, k=32, batch_size=4096, refit=False)
    assert training_bytes(no_refit) < training_bytes(base)
    assert all(training_bytes(s) > training_bytes(no_refit) for s in bigger)
    # a lockstep pack shares the data, so it costs less than that many separate runs
    assert training_bytes(base) < training_bytes(base, members=4) < 4 * training_bytes(base)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_the_estimate_bounds_what_a_cuda_run_allocates(synthetic_store):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    SaeTrainer(TopKSae(4096, 16, 8, seed=0)).train(
        store=synthetic_store, run_id="syn", layer_signature="synthetic",
        config=SaeTrainingConfig(epochs=1, batch_size=1024, device="cuda", progress=False),
        save=False)
    used = torch.cuda.max_memory_allocated() - start
    shape = TrainingShape(d=16, n_latents=4096, k=8, batch_size=1024, eval_tokens=65536)
    assert 0.2 * training_bytes(shape) < used <= training_bytes(shape)
