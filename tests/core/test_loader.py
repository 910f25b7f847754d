import threading

import pytest
import torch
from conftest import indexed_tokens

from harness.core.loader import ActivationLoader, LoaderConfig, prefetched
from harness.core.store import LocalStore, StoreError


def _ids(batches) -> list[int]:
    return [int(v) for b in batches for v in b[:, 0].round().tolist()]


@pytest.mark.parametrize("in_memory_bytes", [1 << 30, 0])  # fast path and streamed path
def test_every_token_is_train_xor_heldout_and_heldout_never_trained(indexed_store, in_memory_bytes):
    src = indexed_store.open("idx", "L")
    cfg = LoaderConfig(batch_size=128, holdout_fraction=0.1, max_eval_tokens=10**9,
                       shuffle_buffer_tokens=1000, in_memory_bytes=in_memory_bytes, seed=3)
    loader = ActivationLoader(src, cfg)
    assert loader.in_memory == (in_memory_bytes > 0)
    held = set(_ids([loader.eval_tokens()]))
    for epoch in range(2):
        train = _ids(loader.train_batches(epoch))
        assert len(train) == len(set(train)) == loader.n_train_tokens  # each once per epoch
        assert not held & set(train)
        assert held | set(train) == set(range(5000))
    assert len(held) == loader.n_heldout_tokens
    assert 0.09 <= len(held) / 5000 <= 0.12


def test_order_is_reproducible_from_seed_and_differs_across_seeds_and_epochs(indexed_store):
    src = indexed_store.open("idx", "L")
    a = ActivationLoader(src, LoaderConfig(batch_size=100, seed=1))
    b = ActivationLoader(src, LoaderConfig(batch_size=100, seed=1))
    c = ActivationLoader(src, LoaderConfig(batch_size=100, seed=2))
    assert _ids(a.train_batches(0)) == _ids(b.train_batches(0))
    assert _ids(a.train_batches(0)) != _ids(c.train_batches(0))
    assert _ids(a.train_batches(0)) != _ids(a.train_batches(1))
    # the held-out split does not depend on the seed: trials of a sweep share it
    assert _ids([a.eval_tokens()]) == _ids([c.eval_tokens()])


def test_streamed_batches_are_shuffled_beyond_one_shard(indexed_store):
    src = indexed_store.open("idx", "L")
    loader = ActivationLoader(src, LoaderConfig(batch_size=256, in_memory_bytes=0,
                                                shuffle_buffer_tokens=2000, seed=0))
    first = _ids([next(iter(loader.train_batches(0)))])
    shards = {i // 700 for i in first}
    assert len(shards) >= 2  # a buffer of several shards is mixed, not one shard in order
    assert first != sorted(first)


def test_max_tokens_caps_train_and_heldout_together(indexed_store):
    src = indexed_store.open("idx", "L")
    loader = ActivationLoader(src, LoaderConfig(batch_size=64, max_tokens=1000,
                                                max_eval_tokens=10**9))
    ids = set(_ids(loader.train_batches(0))) | set(_ids([loader.eval_tokens()]))
    assert ids == set(range(1000))
    assert loader.n_train_tokens + loader.n_heldout_tokens == 1000


def test_max_eval_tokens_subsamples_heldout_blocks(indexed_store):
    src = indexed_store.open("idx", "L")
    loader = ActivationLoader(src, LoaderConfig(holdout_fraction=0.2, max_eval_tokens=200))
    ev = _ids([loader.eval_tokens()])
    assert 150 <= len(ev) <= 300
    assert max(ev) > 2500  # spread over the store, not only its start


def test_float16_store_is_fed_as_float32(tmp_path):
    store = LocalStore(tmp_path)
    store.put_activations("h", "L", indexed_tokens(500).half())
    loader = ActivationLoader(store.open("h", "L"), LoaderConfig(batch_size=50))
    assert next(iter(loader.train_batches(0))).dtype == torch.float32


def test_too_few_tokens_for_a_split_is_an_error(tmp_path):
    store = LocalStore(tmp_path)
    store.put_activations("t", "L", indexed_tokens(1))
    with pytest.raises(StoreError, match="none left for training"):
        ActivationLoader(store.open("t", "L"), LoaderConfig())


def test_prefetched_keeps_order_raises_errors_and_stops_its_thread():
    """The GPU-side prefetch thread (CPU training does not use it)."""
    items = [torch.full((2,), float(i)) for i in range(7)]
    assert [int(t[0]) for t in prefetched(iter(items), depth=2)] == list(range(7))

    def broken():
        yield torch.zeros(1)
        raise StoreError("shard_00003.safetensors: unreadable")

    gen = prefetched(broken(), depth=2)
    next(gen)
    with pytest.raises(StoreError, match="shard_00003"):
        next(gen)

    endless = prefetched((torch.zeros(1) for _ in iter(int, 1)), depth=2)
    next(endless)
    endless.close()  # a pruned trial stops consuming: the producer must stop too
    assert not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
@pytest.mark.parametrize("in_memory_bytes", [1 << 30, 0])  # fast path and streamed path
def test_cuda_batches_come_through_pinned_memory_unchanged(indexed_store, in_memory_bytes):
    """The GPU path (rows gathered into pinned memory, non-blocking copies, a prefetch thread)
    yields exactly the CPU path's batches."""
    src = indexed_store.open("idx", "L")
    cfg = LoaderConfig(batch_size=128, holdout_fraction=0.1, shuffle_buffer_tokens=1000,
                       in_memory_bytes=in_memory_bytes, seed=2)
    cpu = ActivationLoader(src, cfg)
    gpu = ActivationLoader(src, cfg, device="cuda")
    assert gpu._pin
    for epoch in range(2):
        pairs = list(zip(cpu.train_batches(epoch), gpu.train_batches(epoch), strict=True))
        assert all(g.is_cuda and torch.equal(c, g.cpu()) for c, g in pairs)
    assert torch.equal(cpu.eval_tokens(), gpu.eval_tokens().cpu())
