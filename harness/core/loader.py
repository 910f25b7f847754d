"""Streams shuffled training batches and a fixed held-out set out of an ActivationSource.

Split: the (optionally capped) token sequence is cut into equal blocks and a fixed, evenly spread
fraction of the blocks is held out. The split depends only on the store and `holdout_fraction`,
never on the seed, so every trial of a sweep evaluates on the same tokens and none of them is
ever trained on. Whole blocks rather than single tokens are held out so that neighbouring tokens
of one text do not sit on both sides of the split.

Training order: when the training tokens fit in `in_memory_bytes`, they are read once and each
epoch is a full permutation (the fast path). Otherwise shards are read one at a time, in a
shuffled order, into a shuffle buffer of `shuffle_buffer_tokens` tokens that is permuted before
batches are cut. Both are reproducible from the seed, and both hold tokens in the store's dtype
(a batch is converted when it is cut). harness.core.runtime.memory_plan sizes them from a byte
budget. """

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from harness.core.runtime import token_cache
from harness.core.runtime.memory_plan import MemoryPlan
from harness.core.store import ActivationSource, StoreError

READ_ROWS = 64
"""A streamed store is read this many consecutive rows at a time (256 KiB at d = 2,048 in
fp16): a shuffle buffer then holds pieces of many places, and its batches train as a full
shuffle's do (the measurement: docs/data.md)."""
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
        self.memory_plan: MemoryPlan | None = None
        """The byte plan its sizes came from (harness.core.runtime.memory_plan), when a trainer made
        one."""

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

    def _pieces(self, i: int, length: int) -> list[tuple[int, int]]:
        """The [start, stop) pieces shard `i`'s first `length` tokens are read in: READ_ROWS
        each, or the whole shard where it cannot be sliced (a padded one)."""
        rows = READ_ROWS if self.source.sliceable(i) else length
        return [(start, min(length, start + rows)) for start in range(0, length, rows)]

    def _shard_masks(self, entry: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(train mask, eval-subset mask) over the first `length` tokens of a shard."""
        _, start, length = entry
        blocks = (start + torch.arange(length)) // self.block
        held = self._held_blocks(blocks)
        in_eval = held & torch.isin(blocks, self._eval_keep)
        return ~held, in_eval

    # ---------------------------------------------------------------------------- data
    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n_train_tokens / self.config.batch_size)

    @property
    def in_memory(self) -> bool:
        itemsize = torch.empty(0, dtype=self.source.dtype).element_size()
        return self.n_train_tokens * self.source.d * itemsize <= self.config.in_memory_bytes

    def eval_tokens(self) -> torch.Tensor:
        """The held-out evaluation set [n, d] (built once): on a GPU, there in the training
        dtype; on the CPU, in the store's dtype (fp16 stays fp16: `eval_batches` converts a
        batch at a time)."""
        if self._eval is None:
            host = token_cache.cached(
                lambda: ("eval", self.config.max_eval_tokens, *self._split_key()),
                self._read_eval)
            self._eval = host if self.device.type == "cpu" else self._to_device(host)
        return self._eval

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The held-out set in batches, on the device in the training dtype."""
        tokens = self.eval_tokens()
        for start in range(0, tokens.shape[0], batch_size):
            yield tokens[start:start + batch_size].to(self.device, dtype=self.dtype)

    def heldout_problem(self) -> str | None:
        """Why the held-out split cannot give a meaningful FVU (too few tokens, or no variance:
        FVU divides by it), else None. Reads the held-out tokens only."""
        n_eval = min(self.n_heldout_tokens, self.config.max_eval_tokens)
        if n_eval < MIN_EVAL_TOKENS:
            return (f"only {n_eval} held-out token(s) of {self.n_tokens} (holdout_fraction "
                    f"{self.config.holdout_fraction:g}); the held-out metrics need at least "
                    f"{MIN_EVAL_TOKENS}: use a larger store or holdout_fraction")
        total = torch.zeros(self.source.d, dtype=torch.float64)
        squares = torch.zeros_like(total)
        n = 0
        for x in self.eval_batches(self.config.batch_size):  # no float64 copy of the whole set
            x = x.to(torch.float64)
            total += x.sum(0)
            squares += x.pow(2).sum(0)
            n += x.shape[0]
        variance = squares / n - (total / n).pow(2)
        if not float(variance.sum()) > 1e-12 * max(1.0, float((squares / n).sum())):
            return ("the held-out activations have zero variance (every token is the same "
                    "vector), so FVU is undefined; check the capture")
        return None

    def _read_eval(self) -> torch.Tensor:
        return self._read_split(1)

    def _read_train(self) -> torch.Tensor:
        return self._read_split(0)

    def _read_split(self, side: int) -> torch.Tensor:
        """The training (`side` 0) or held-out (1) rows, read a piece at a time into one
        tensor filled in place: concatenating whole shards would hold the split twice, and
        many small copies between pieces' buffers would fragment the heap."""
        masks = [self._shard_masks(entry)[side] for entry in self._offsets]
        held = torch.empty(sum(int(m.sum()) for m in masks), self.source.d,
                           dtype=self.source.dtype, pin_memory=self._pin)
        at = 0
        for (i, _, length), keep in zip(self._offsets, masks, strict=True):
            for start, stop in self._pieces(i, length):
                ids = torch.nonzero(keep[start:stop]).flatten()
                if not ids.numel():  # a piece with none of the split's rows is never read
                    continue
                piece = self.source.read_piece(i, start, stop)
                torch.index_select(piece, 0, ids, out=held[at:at + ids.numel()])
                at += ids.numel()
        return held

    def _split_key(self) -> tuple:
        """What decides which tokens a split holds (token_cache's key): the files, the cap, the
        held-out fraction, and whether they are pinned."""
        files, keys = self.source.identity(len(self._offsets))
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
        """Pieces of READ_ROWS consecutive tokens, from every shard, in a shuffled order, read
        one at a time; their training rows are copied into one shuffle buffer of
        `shuffle_buffer_tokens` rows (in the store's dtype), which is permuted and cut into
        batches whenever it is full; what does not fill a last batch is carried into the next
        fill. A buffer holds pieces of many shards, not a few whole ones (a buffer of one
        shard's consecutive tokens trains worse: docs/data.md). Held at once: the buffer and
        one piece (a padded shard is one piece)."""
        bs = self.config.batch_size
        size = max(bs, min(self.config.shuffle_buffer_tokens, self.n_train_tokens))
        buf = torch.empty(size, self.source.d, dtype=self.source.dtype)
        at = 0
        train = [self._shard_masks(entry)[0] for entry in self._offsets]
        pieces = [(j, start, stop) for j, (i, _, length) in enumerate(self._offsets)
                  for start, stop in self._pieces(i, length)]
        order = torch.randperm(len(pieces), generator=gen).tolist()
        for j, pos in enumerate(order):
            shard, start, stop = pieces[pos]
            piece = self.source.read_piece(self._offsets[shard][0], start, stop)
            ids = torch.nonzero(train[shard][start:stop]).flatten()
            last = j == len(order) - 1
            while ids.numel():
                take = min(size - at, ids.numel())
                torch.index_select(piece, 0, ids[:take], out=buf[at:at + take])
                at, ids = at + take, ids[take:]
                if at < size and not (last and not ids.numel()):
                    continue
                yield from self._drain(buf, at, last and not ids.numel(), gen)
                at = self._carried
            if last and at:  # the last piece held no training row, or left some in the buffer
                yield from self._drain(buf, at, True, gen)

    def _drain(self, buf: torch.Tensor, at: int, final: bool,
               gen: torch.Generator) -> Iterator[torch.Tensor]:
        """Batches of the buffer's first `at` rows in a random order; what does not fill a
        batch (unless `final`) moves to the buffer's start (`_carried` rows) for the next fill."""
        bs = self.config.batch_size
        perm = torch.randperm(at, generator=gen)
        n_full = at if final else (at // bs) * bs
        for start in range(0, n_full, bs):
            yield self._gather(buf, perm[start:min(start + bs, n_full)])
        leftover = buf[perm[n_full:at]].clone()  # < bs rows
        buf[:leftover.shape[0]] = leftover
        self._carried = leftover.shape[0]

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
