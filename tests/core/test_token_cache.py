import os

import pytest
import torch
from conftest import indexed_tokens
from safetensors.torch import save_file

from harness.core.loader import ActivationLoader, LoaderConfig
from harness.core.runtime import token_cache
from harness.core.store import LocalStore


@pytest.fixture()
def keep():
    token_cache.keep_tokens(1 << 20)
    yield
    token_cache.keep_tokens(0)


def _counting_source(store: LocalStore, run: str = "idx"):
    """The run's source, counting shard reads (whole, or a piece at a time)."""
    source = store.open(run, "L")
    reads = []
    read, read_piece = source.read_shard, source.read_piece

    def counted(i: int) -> torch.Tensor:
        reads.append(i)
        return read(i)

    def counted_piece(i: int, start: int, stop: int) -> torch.Tensor:
        reads.append(i)
        return read_piece(i, start, stop)

    source.read_shard, source.read_piece = counted, counted_piece
    return source, reads


def test_off_by_default_every_loader_reads_the_store(indexed_store):
    assert token_cache.held_bytes() == 0
    source, reads = _counting_source(indexed_store)
    counts = []
    for _ in range(2):
        loader = ActivationLoader(source, LoaderConfig(batch_size=500))
        loader.eval_tokens()
        next(iter(loader.train_batches(0)))
        counts.append(len(reads))
    assert counts[1] == 2 * counts[0] > 0
    assert token_cache.held_bytes() == 0


def test_kept_tokens_are_read_once_and_give_the_same_batches(indexed_store, keep):
    source, reads = _counting_source(indexed_store)
    cfg = LoaderConfig(batch_size=500, holdout_fraction=0.1, seed=4)
    fresh = [(b.clone()) for b in ActivationLoader(source, cfg).train_batches(1)]
    eval_x = ActivationLoader(source, cfg).eval_tokens()
    n_reads = len(reads)
    for seed in (4, 5):  # a trial with another seed (order) shares the split's tokens
        loader = ActivationLoader(source, LoaderConfig(batch_size=500, holdout_fraction=0.1,
                                                       seed=seed))
        assert torch.equal(loader.eval_tokens(), eval_x)
        batches = list(loader.train_batches(1))
        assert len(reads) == n_reads  # nothing read again
    assert all(torch.equal(a, b) for a, b in zip(
        fresh, ActivationLoader(source, cfg).train_batches(1), strict=True))
    assert token_cache.held_bytes() == (5000 * 4) * 4  # every token once, float32
    assert sum(b.shape[0] for b in batches) == 4500


def test_another_split_or_a_rewritten_store_is_read_afresh(indexed_store, keep):
    source, reads = _counting_source(indexed_store)
    ActivationLoader(source, LoaderConfig(holdout_fraction=0.1)).eval_tokens()
    first = len(reads)
    ActivationLoader(source, LoaderConfig(holdout_fraction=0.1)).eval_tokens()
    assert len(reads) == first
    ActivationLoader(source, LoaderConfig(holdout_fraction=0.2)).eval_tokens()
    assert len(reads) > first
    loader = ActivationLoader(source, LoaderConfig(holdout_fraction=0.1))
    assert not (torch.cat(list(loader.train_batches(0)))[:, 1] == 123.0).any()
    # shard 0 rewritten in place, same size: only its modification time tells it apart
    path = source.shards[0].path
    rewritten = indexed_tokens(700)
    rewritten[:, 1] = 123.0
    st = os.stat(path)
    save_file({source.shards[0].key: rewritten}, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert os.stat(path).st_size == st.st_size
    loader = ActivationLoader(indexed_store.open("idx", "L"), LoaderConfig(holdout_fraction=0.1))
    assert (torch.cat(list(loader.train_batches(0)))[:, 1] == 123.0).sum() > 500


def test_least_recently_used_entries_go_past_the_budget():
    token_cache.keep_tokens(3 * 400)
    try:
        for name in "abc":
            token_cache.cached(lambda n=name: n, lambda: torch.zeros(100))  # 400 bytes each
        token_cache.cached(lambda: "a", lambda: pytest.fail("kept"))  # a is now the most recent
        token_cache.cached(lambda: "d", lambda: torch.zeros(100))
        assert token_cache.held_bytes() == 3 * 400
        rebuilt = []
        token_cache.cached(lambda: "b", lambda: rebuilt.append(1) or torch.zeros(100))
        assert rebuilt == [1]  # b was the least recently used
        token_cache.cached(lambda: "big", lambda: torch.zeros(1000))  # over the budget: not kept
        assert token_cache.held_bytes() <= 3 * 400
    finally:
        token_cache.keep_tokens(0)
