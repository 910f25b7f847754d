"""Streams shuffled training batches and a fixed held-out set out of an ActivationSource.

Split: the (optionally capped) token sequence is cut into equal blocks and a fixed, evenly spread
fraction of the blocks is held out. The split depends only on the store and `holdout_fraction`,
never on the seed, so every trial of a sweep evaluates on the same tokens and none of them is
ever trained on. Whole blocks rather than single tokens are held out so that neighbouring tokens
of one text do not sit on both sides of the split.

Training order: when the training tokens fit in `in_memory_bytes`, they are read once and each
epoch is a full permutation (the fast path). Otherwise shards are read one at a time through
safetensors' memory map, in a shuffled order, into a shuffle buffer of `shuffle_buffer_tokens`
tokens that is permuted before batches are cut. Both are reproducible from the seed.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from harness.core import token_cache
from harness.core.store import ActivationSource, StoreError

MIN_EVAL_TOKENS = 64
"""Fewer held-out tokens make FVU and L0 noise, not a measurement: training refuses them."""


@dataclass(frozen=True)
class LoaderConfig:
    """How tokens are split, shuffled and batched."""

    batch_size: int = 4096
    """Training tokens per batch."""
    holdout_fraction: float = 0.05
    """Fraction of the store's tokens held out for evaluation, never trained on."""
    max_tokens: int | None = None
    """Use only the first `max_tokens` tokens of the store (train and held-out together)."""
    max_eval_tokens: int = 65536
    """Evaluate on at most this many held-out tokens (an evenly spread subset of the blocks)."""
    shuffle_buffer_tokens: int = 1 << 20
    """Tokens mixed together when streaming a store that does not fit in memory."""
    in_memory_bytes: int = 4 << 30
    """Load all training tokens into memory when they take at most this many bytes."""
    seed: int = 0
    """Seed of the shard order and the shuffles."""
    prefetch_batches: int = 2
    """Batches prepared ahead by a background thread while a GPU trains on the current one
    (on CPU the step uses every core, so it is not used); 0 = none."""


class ActivationLoader:
    """Training batches and the held-out set of one activation source, on one device."""

    def __init__(
        self,
        source: ActivationSource,
        config: LoaderConfig,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if config.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {config.batch_size}")
        if not 0.0 < config.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {config.holdout_fraction}")
        self.source = source
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self._pin = self.device.type == "cuda"

        total = source.n_tokens
        if config.max_tokens is not None:
            if config.max_tokens <= 0:
                raise ValueError(f"max_tokens must be positive, got {config.max_tokens}")
            total = min(total, config.max_tokens)
        self.n_tokens = total
        # Blocks of at most 4096 tokens, at least ~100 of them, so the fraction is accurate.
        self.block = max(1, min(4096, total // 100))
        self._offsets: list[tuple[int, int, int]] = []  # (shard index, global start, length)
        start = 0
        for i, ref in enumerate(source.shards):
            length = min(ref.n_tokens, total - start)
            if length <= 0:
                break
            self._offsets.append((i, start, length))
            start += length
        n_blocks = math.ceil(total / self.block)
        held = self._held_blocks(torch.arange(n_blocks))
        self.n_eval_blocks = int(held.sum())
        held_tokens = int(sum(min(self.block, total - b * self.block)
                              for b in torch.nonzero(held).flatten().tolist()))
        self.n_heldout_tokens = held_tokens
        self.n_train_tokens = total - held_tokens
        if self.n_train_tokens <= 0:
            raise StoreError(f"{source.run_id}: only {total} tokens; none left for training "
                             f"after holding out {config.holdout_fraction:.0%}")
        self._eval_keep = self._eval_block_subset()  # held-out blocks evaluated on
        self._cache: torch.Tensor | None = None
        self._eval: torch.Tensor | None = None

    # ---------------------------------------------------------------------------- split
    def _held_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """Block b is held out iff ceil((b+1)h) > ceil(bh): ceil(n_blocks*h) evenly spread."""
        h = self.config.holdout_fraction
        b = blocks.to(torch.float64)
        return torch.ceil((b + 1) * h - 1e-9) > torch.ceil(b * h - 1e-9)

    def _eval_block_subset(self) -> torch.Tensor:
        held = torch.nonzero(self._held_blocks(
            torch.arange(math.ceil(self.n_tokens / self.block)))).flatten()
        want = max(1, math.ceil(self.config.max_eval_tokens / self.block))
        if len(held) > want:
            held = held[torch.linspace(0, len(held) - 1, want).round().long()]
        return held

    def _shard_masks(self, entry: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(train mask, eval-subset mask) over the first `length` tokens of a shard."""
        _, start, length = entry
        blocks = (start + torch.arange(length)) // self.block
        held = self._held_blocks(blocks)
        in_eval = held & torch.isin(blocks, self._eval_keep)
        return ~held, in_eval

    def _read(self, entry: tuple[int, int, int]) -> torch.Tensor:
        i, _, length = entry
        return self.source.read_shard(i)[:length]

    # ---------------------------------------------------------------------------- data
    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n_train_tokens / self.config.batch_size)

    @property
    def in_memory(self) -> bool:
        itemsize = torch.empty(0, dtype=self.source.dtype).element_size()
        return self.n_train_tokens * self.source.d * itemsize <= self.config.in_memory_bytes

    def eval_tokens(self) -> torch.Tensor:
        """The held-out evaluation set [n, d], on the loader's device (built once)."""
        if self._eval is None:
            host = token_cache.cached(
                lambda: ("eval", self.config.max_eval_tokens, *self._split_key()),
                self._read_eval)
            self._eval = self._to_device(host)
        return self._eval

    def heldout_problem(self) -> str | None:
        """Why the held-out split cannot give a meaningful FVU (too few tokens, or no variance:
        FVU divides by it), else None. Reads the held-out tokens only."""
        n_eval = min(self.n_heldout_tokens, self.config.max_eval_tokens)
        if n_eval < MIN_EVAL_TOKENS:
            return (f"only {n_eval} held-out token(s) of {self.n_tokens} (holdout_fraction "
                    f"{self.config.holdout_fraction:g}); the held-out metrics need at least "
                    f"{MIN_EVAL_TOKENS}: use a larger store or holdout_fraction")
        x = self.eval_tokens().to(torch.float64)
        if not float(x.var(dim=0, unbiased=False).sum()) > 0:
            return ("the held-out activations have zero variance (every token is the same "
                    "vector), so FVU is undefined; check the capture")
        return None

    def _read_eval(self) -> torch.Tensor:
        parts = []
        for entry in self._offsets:
            _, in_eval = self._shard_masks(entry)
            if bool(in_eval.any()):
                parts.append(self._read(entry)[in_eval])
        held = torch.cat(parts)
        return held.pin_memory() if self._pin else held

    def _read_train(self) -> torch.Tensor:
        train = torch.cat([self._read(e)[self._shard_masks(e)[0]] for e in self._offsets])
        return train.pin_memory() if self._pin else train

    def _split_key(self) -> tuple:
        """What decides which tokens a split holds (token_cache's key): the files, the cap, the
        held-out fraction, and whether they are pinned."""
        refs = self.source.shards[:len(self._offsets)]
        files = [ref.path for ref in refs] + [ref.mask_path for ref in refs if ref.mask_path]
        keys = tuple((ref.key, ref.mask_key) for ref in refs)
        return (token_cache.shard_files_key(files), keys, self.n_tokens,
                self.config.holdout_fraction, self._pin)

    def train_batches(self, epoch: int) -> Iterator[torch.Tensor]:
        """Shuffled training batches [<= batch_size, d] for one epoch, on the device."""
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        batches = self._memory_batches(gen) if self.in_memory else self._streamed_batches(gen)
        # Only when a GPU trains: on CPU the step already uses every core, and a producer thread
        # only slows it (docs/benchmarks.md, "Data").
        if self.config.prefetch_batches > 0 and self._pin:
            return prefetched(batches, self.config.prefetch_batches)
        return batches

    def _memory_batches(self, gen: torch.Generator) -> Iterator[torch.Tensor]:
        if self._cache is None:
            self._cache = token_cache.cached(lambda: ("train", *self._split_key()),
                                             self._read_train)
        perm = torch.randperm(self._cache.shape[0], generator=gen)
        bs = self.config.batch_size
        for start in range(0, perm.numel(), bs):
            yield self._gather(self._cache, perm[start:start + bs])

    def _streamed_batches(self, gen: torch.Generator) -> Iterator[torch.Tensor]:
        """Shards in a shuffled order; their training rows are copied straight into one shuffle
        buffer, and each batch is gathered from it through a permutation (three copies of a
        token in all: file read, buffer fill, batch gather)."""
        bs = self.config.batch_size
        order = torch.randperm(len(self._offsets), generator=gen).tolist()
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (shard rows, train row ids)
        n_pending = 0
        carry: torch.Tensor | None = None  # rows left over from the previous buffer (< bs)
        for j, pos in enumerate(order):
            entry = self._offsets[pos]
            train_rows = torch.nonzero(self._shard_masks(entry)[0]).flatten()
            pending.append((self._read(entry), train_rows))
            n_pending += train_rows.numel()
            last = j == len(order) - 1
            if n_pending < self.config.shuffle_buffer_tokens and not last:
                continue
            n_carry = 0 if carry is None else carry.shape[0]
            buf = torch.empty(n_carry + n_pending, self.source.d, dtype=self.source.dtype)
            if carry is not None:
                buf[:n_carry] = carry
            at = n_carry
            for rows, ids in pending:
                torch.index_select(rows, 0, ids, out=buf[at:at + ids.numel()])
                at += ids.numel()
            perm = torch.randperm(buf.shape[0], generator=gen)
            n_full = buf.shape[0] if last else (buf.shape[0] // bs) * bs
            for start in range(0, n_full, bs):
                yield self._gather(buf, perm[start:min(start + bs, n_full)])
            carry = buf[perm[n_full:]] if n_full < buf.shape[0] else None
            pending, n_pending = [], 0

    def _gather(self, tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """tokens[rows] on the device. For a GPU the rows are gathered straight into pinned
        memory (the host allocator reuses it once the copy is done) and copied without
        blocking, so the copy overlaps the step."""
        if not self._pin:
            return tokens[rows].to(self.device, dtype=self.dtype)
        batch = torch.empty((rows.numel(), tokens.shape[1]), dtype=tokens.dtype, pin_memory=True)
        torch.index_select(tokens, 0, rows, out=batch)
        return batch.to(self.device, dtype=self.dtype, non_blocking=True)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self._pin:
            return t.pin_memory().to(self.device, dtype=self.dtype, non_blocking=True)
        return t.to(self.device, dtype=self.dtype)


_DONE = object()


def prefetched(batches: Iterator[torch.Tensor], depth: int) -> Iterator[torch.Tensor]:
    """Produce `batches` in a background thread, up to `depth` ahead of the consumer.

    Reading shards, shuffling, gathering rows and host-to-device copies release the GIL, so they
    overlap the training step. Errors are re-raised in the consumer; a consumer that stops early
    (a pruned trial) stops the thread.
    """
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        out.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            out.put(e)

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
