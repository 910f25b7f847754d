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

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.core.atomic import write_json
from harness.core.store import LocalStore, StoreError, open_store
from harness.data.cache import cache_dir
from harness.data.models import find_module, load_model

PYDOC_CORPUS = "pydoc"
PYTHON_DOCS_CORPUS = "python-docs"
DOCSTRINGS_CORPUS = "docstrings"
CORPORA = (PYDOC_CORPUS, PYTHON_DOCS_CORPUS, DOCSTRINGS_CORPUS)


class _StopForward(Exception):  # noqa: N818 - a control signal
    """Raised by the capture hook: the layers after the hooked one are not needed."""


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
    "docstrings" (the standard library's docstrings) or "python-docs" (both, about 2M
    tokens)."""
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


def corpus_texts(source: str) -> tuple[list[str], str]:
    """(texts, description) from a .txt file, a folder of .txt files, or a corpus name
    (CORPORA)."""
    if source in CORPORA:
        from pydoc_data.topics import topics

        texts = [topics[k] for k in sorted(topics)]
        if source == PYDOC_CORPUS:
            return texts, "pydoc_data.topics of CPython (Python's help texts, English)"
        docs = stdlib_docstrings()
        if source == DOCSTRINGS_CORPUS:
            return docs, f"{len(docs)} docstrings of CPython's standard library (English)"
        return (texts + docs, f"pydoc_data.topics of CPython and {len(docs)} docstrings of its "
                "standard library (English)")
    path = Path(source)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise StoreError(f"{path}: no .txt files in this folder")
        return [f.read_text(encoding="utf-8") for f in files], f"{len(files)} .txt files in {path}"
    if path.is_file():
        return [path.read_text(encoding="utf-8")], f"text file {path}"
    raise StoreError(f"{source}: no such text file or folder (or use one of {list(CORPORA)})")


def stdlib_docstrings() -> list[str]:
    """Module, class and function docstrings of the standard library's .py files, in path
    order. Read with `ast`, so nothing is imported; only docstrings of 200+ characters (short
    ones are mostly signatures). Parsing the whole library takes seconds, so the list is kept in
    the cache (harness.data.cache), keyed by the Python version and the library's folder."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha256(f"{sys.version}|{root}".encode()).hexdigest()[:16]
    cached = cache_dir("corpora") / f"stdlib-docstrings-{key}.json"
    try:
        docs = json.loads(cached.read_text(encoding="utf-8"))
        if isinstance(docs, list) and all(isinstance(d, str) for d in docs):
            return docs
    except (OSError, ValueError):
        pass
    docs = _parse_docstrings(root)
    with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
        write_json(cached, docs)
    return docs


def _parse_docstrings(root: Path) -> list[str]:
    import ast

    docs = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200:
                    docs.append(doc)
    return docs


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
    module = find_module(model, cfg.layer, cfg.model)
    seqs = _sequences(tokenizer, texts, cfg.seq_len, loaded.bos_id)
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in ("store", "run_id", "max_tokens", "batch_size", "device",
                             "shard_tokens")}
    done_seqs, have = _resume_point(store, cfg, settings)
    if have >= (cfg.max_tokens or float("inf")) or done_seqs >= len(seqs):
        return CaptureResult(n_tokens=have, new_tokens=0, seconds=0.0, resumed_from=done_seqs,
                             complete=True)

    captured: dict[str, torch.Tensor] = {}

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured["x"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = module.register_forward_hook(hook)
    special = set(tokenizer.all_special_ids) if cfg.drop_special else set()
    meta = {"model_id": cfg.model, "model_path": loaded.path,
            "model_class": type(model).__name__, "corpus": corpus,
            "tokenizer": type(tokenizer).__name__, "seq_len": cfg.seq_len,
            "dropped": "padding and special tokens" if cfg.drop_special else "padding",
            "bos_in_front": loaded.bos_id,
            "capture_settings": settings}
    pending: list[torch.Tensor] = []
    n_pending, new = 0, 0
    show = progress if progress is not None else sys.stderr.isatty()
    bar = tqdm(total=len(seqs), initial=done_seqs, unit="seq", disable=not show,
               desc=f"capture {cfg.layer}")
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for i, batch in _batches(seqs, done_seqs, cfg.batch_size):
                padded = tokenizer.pad({"input_ids": batch}, return_tensors="pt")
                ids = padded["input_ids"].to(device)
                mask = padded["attention_mask"].to(device).bool()
                with contextlib.suppress(_StopForward):
                    model(input_ids=ids, attention_mask=mask)
                keep = mask & ~torch.isin(ids, torch.tensor(sorted(special) or [-1],
                                                            device=device))
                acts = captured.pop("x")[keep].to("cpu", dtype)
                if cfg.max_tokens is not None:
                    acts = acts[:max(0, cfg.max_tokens - have - new - n_pending)]
                pending.append(acts)
                n_pending += acts.shape[0]
                bar.update(len(batch))
                finished = i + len(batch)
                limit = cfg.max_tokens is not None and have + new + n_pending >= cfg.max_tokens
                if n_pending >= cfg.shard_tokens or limit or finished >= len(seqs):
                    complete = limit or finished >= len(seqs)
                    store.put_activations(
                        cfg.run_id, cfg.layer, torch.cat(pending), dtype=dtype,
                        shard_tokens=max(cfg.shard_tokens, n_pending),
                        meta={**meta, "capture_progress": {"sequences_done": finished,
                                                           "complete": complete}})
                    new += n_pending
                    pending, n_pending = [], 0
                    if complete:
                        break
    finally:
        handle.remove()
        bar.close()
    seconds = time.perf_counter() - start
    return CaptureResult(n_tokens=have + new, new_tokens=new, seconds=seconds,
                         resumed_from=done_seqs, complete=True)


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
    return int(progress.get("sequences_done", 0)), int(meta.get("n_tokens", 0))
