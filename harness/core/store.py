"""Activation stores on local disk: our own layout (read and write) and mi_crow's (read).

Our layout::

    <base>/activations/<run_id>/meta.json
    <base>/activations/<run_id>/shard_00000.safetensors   # one tensor "activations" [tokens, d]

mi_crow's layout (what `mi_crow` 1.0's LocalStore writes when saving activations)::

    <base>/runs/<run_id>/meta.json                  # run_name, model, options, layer_signatures
    <base>/runs/<run_id>/batch_<i>/metadata.json
    <base>/runs/<run_id>/batch_<i>/<layer>/activations.safetensors            # "tensor" [B, T, D]
    <base>/runs/<run_id>/batch_<i>/attention_masks/attention_mask.safetensors # "tensor" bool [B, T]

plus its unified variant (``<base>/runs/<run_id>/detectors/<layer>/activations.safetensors`` with
keys ``batch_<i>``) and old single-file runs (``<base>/runs/<run_id>/batch_000000.safetensors``).
Padding positions (attention mask 0) are dropped: we never train on them.

Opening a run validates every shard's header (cheap: safetensors reads only the header), so a
truncated or inconsistent file is reported by name before any training starts. Values are checked
for NaN/inf when a shard is first read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from harness.core.atomic import write_json, write_safetensors

FORMAT = "saesweep.activations/1"
ACTIVATIONS_KEY = "activations"
MASK_DIR = "attention_masks"
# safetensors dtype names -> torch dtypes we accept as activations
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "F64": torch.float64}
RESERVED_META_KEYS = {"format", "run_id", "layer_signature", "d", "dtype", "n_tokens", "shards",
                      "created", "updated"}


class StoreError(Exception):
    """Bad or missing activation data; the message names the file or key at fault."""


def flatten_layer_name(name: str) -> str:
    """mi_crow stores `transformer.h.0.attn` as `<modelclass>_transformer_h_0_attn`."""
    return name.replace(".", "_")


@dataclass(frozen=True)
class ShardRef:
    """One tensor of activations on disk (and the padding mask that goes with it, if any)."""

    path: Path
    """The safetensors file."""
    key: str
    """Tensor key inside the file."""
    shape: tuple[int, ...]
    """Stored shape: [tokens, d] or [batch, seq, d]."""
    mask_path: Path | None = None
    """File holding the attention mask for [batch, seq] shards (mi_crow)."""
    mask_key: str | None = None
    """Tensor key of the mask inside `mask_path`."""
    n_tokens: int = 0
    """Tokens that remain after dropping padding."""


@dataclass
class ActivationSource:
    """A validated (run, layer) of activations: the shards, in order, and their metadata."""

    run_id: str
    layer_signature: str
    d: int
    dtype: torch.dtype
    shards: list[ShardRef]
    layout: str
    """"saesweep" or "mi_crow"."""
    meta: dict[str, Any] = field(default_factory=dict)
    _checked: set[int] = field(default_factory=set, repr=False)

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def model_id(self) -> str | None:
        return self.meta.get("model_id") or self.meta.get("model")

    def read_shard(self, i: int) -> torch.Tensor:
        """The shard's non-padding tokens as a [n_tokens, d] tensor in the stored dtype.

        safe_open memory-maps the file, so only this shard is ever resident, whatever the size
        of the store. Values are checked for NaN/inf the first time a shard is read.
        """
        ref = self.shards[i]
        t = _load_tensor(ref.path, ref.key).reshape(-1, self.d)
        if ref.mask_path is not None:
            mask = _load_tensor(ref.mask_path, ref.mask_key or "tensor").reshape(-1).bool()
            t = t[mask]
        if t.shape[0] != ref.n_tokens:
            raise StoreError(f"{ref.path}: expected {ref.n_tokens} tokens, read {t.shape[0]}")
        if i not in self._checked:
            # fast path: a NaN or inf makes the sum non-finite; a float32 sum that merely
            # overflows on huge values is cleared by the exact per-value check
            if not math.isfinite(float(t.sum(dtype=torch.float32))):
                bad = int((~torch.isfinite(t)).any(dim=1).sum())
                if bad:
                    raise StoreError(f"{ref.path} (key {ref.key!r}): {bad} token(s) hold NaN "
                                     "or inf activations")
            self._checked.add(i)
        return t


class LocalStore:
    """Activation runs and training runs under one base folder."""

    def __init__(self, base_path: str | Path) -> None:
        self.base_path = Path(base_path)

    # ----------------------------------------------------------------------------- paths
    def activation_dir(self, run_id: str) -> Path:
        return self.base_path / "activations" / _check_id(run_id)

    def run_dir(self, run_id: str) -> Path:
        """`<base>/runs/<run_id>`: mi_crow's activation runs and our SAE training runs."""
        return self.base_path / "runs" / _check_id(run_id)

    def list_activation_runs(self) -> list[str]:
        """Runs holding activations, in either layout."""
        ours = sorted(p.parent.name for p in (self.base_path / "activations").glob("*/meta.json"))
        theirs = sorted(p.name for p in (self.base_path / "runs").glob("*")
                        if p.is_dir() and _mi_crow_batches(p))
        return ours + [r for r in theirs if r not in ours]

    # ----------------------------------------------------------------------------- writing
    def put_activations(
        self,
        run_id: str,
        layer_signature: str,
        activations: torch.Tensor | Iterable[torch.Tensor],
        meta: Mapping[str, Any] | None = None,
        *,
        shard_tokens: int = 65536,
        dtype: torch.dtype | None = None,
    ) -> dict[str, Any]:
        """Append activations to `<base>/activations/<run_id>/` and return the updated meta.

        Each tensor is [tokens, d] or [batch, seq, d] (flattened); tensors larger than
        `shard_tokens` are split. Every shard and meta.json are written atomically, meta.json
        after each shard, so an interrupted write never leaves meta naming a missing shard.
        `meta` adds descriptive keys (model_id, corpus, tokenizer, ...).
        """
        run = self.activation_dir(run_id)
        meta_path = run / "meta.json"
        extra = dict(meta or {})
        clash = RESERVED_META_KEYS & extra.keys()
        if clash:
            raise ValueError(f"meta keys {sorted(clash)} are set by the store; use other names")
        if meta_path.exists():
            current = _read_json(meta_path)
            if current.get("layer_signature") != layer_signature:
                raise StoreError(f"{meta_path}: run holds layer {current.get('layer_signature')!r},"
                                 f" cannot append layer {layer_signature!r}")
        else:
            current = {"format": FORMAT, "run_id": run_id, "layer_signature": layer_signature,
                       "model_id": None, "d": None, "dtype": None, "n_tokens": 0, "shards": [],
                       "created": _now()}
        current.update(extra)

        tensors = [activations] if isinstance(activations, torch.Tensor) else activations
        for tensor in tensors:
            for piece in _split_rows(_as_rows(tensor), shard_tokens):
                if dtype is not None:
                    piece = piece.to(dtype)
                if not piece.is_floating_point():
                    raise StoreError(f"activations must be floating point, got {piece.dtype}")
                if current["d"] is None:
                    current["d"] = int(piece.shape[1])
                    current["dtype"] = str(piece.dtype).removeprefix("torch.")
                if piece.shape[1] != current["d"]:
                    raise StoreError(f"{meta_path}: run has d={current['d']}, got a tensor with "
                                     f"d={piece.shape[1]}")
                if str(piece.dtype).removeprefix("torch.") != current["dtype"]:
                    raise StoreError(f"{meta_path}: run has dtype {current['dtype']}, got "
                                     f"{piece.dtype} (pass dtype= to convert)")
                if not bool(torch.isfinite(piece).all()):
                    raise StoreError(f"refusing to write NaN/inf activations to {run}")
                name = f"shard_{len(current['shards']):05d}.safetensors"
                write_safetensors(run / name, {ACTIVATIONS_KEY: piece})
                current["shards"].append({"file": name, "n_tokens": int(piece.shape[0])})
                current["n_tokens"] += int(piece.shape[0])
                current["updated"] = _now()
                write_json(meta_path, current)
        if not meta_path.exists():
            write_json(meta_path, current)
        return current

    # ----------------------------------------------------------------------------- reading
    def open(self, run_id: str, layer_signature: str) -> ActivationSource:
        """Resolve and validate the shards of (run_id, layer_signature) in either layout."""
        ours = self.activation_dir(run_id) / "meta.json"
        theirs = self.run_dir(run_id)
        if ours.exists():
            return self._open_ours(run_id, layer_signature, ours)
        if theirs.is_dir() and (_mi_crow_batches(theirs) or (theirs / "detectors").is_dir()):
            return _open_mi_crow(run_id, layer_signature, theirs)
        present = self.list_activation_runs()
        raise StoreError(
            f"no activation run {run_id!r} under {self.base_path}: looked for {ours} and for "
            f"mi_crow batches in {theirs}; runs present: {present or 'none'}")

    def _open_ours(self, run_id: str, layer: str, meta_path: Path) -> ActivationSource:
        meta = _read_json(meta_path)
        for key in ("d", "dtype", "n_tokens", "layer_signature", "shards"):
            if key not in meta:
                raise StoreError(f"{meta_path}: missing key {key!r}")
        stored = meta["layer_signature"]
        if not _same_layer(stored, layer):
            raise StoreError(f"{meta_path}: layer {layer!r} not in run {run_id!r}; layers "
                             f"present: [{stored!r}]")
        if not meta["shards"] or meta["n_tokens"] == 0:
            raise StoreError(f"{meta_path}: empty store (no shards / 0 tokens)")
        d = int(meta["d"])
        shards = []
        for entry in meta["shards"]:
            path = meta_path.parent / entry["file"]
            shape = _header_shape(path, ACTIVATIONS_KEY)
            stored_dtype = _header_dtype(path, ACTIVATIONS_KEY)
            if stored_dtype != _torch_dtype(meta["dtype"], meta_path):
                raise StoreError(f"{path}: shard holds {_dtype_name(stored_dtype)} but "
                                 f"{meta_path} says dtype {meta['dtype']!r}")
            if shape[-1] != d:
                raise StoreError(f"{path}: shard has d={shape[-1]} but {meta_path} says d={d}")
            rows = _numel(shape[:-1])
            if rows != entry["n_tokens"]:
                raise StoreError(f"{path}: shard holds {rows} tokens, {meta_path} says "
                                 f"{entry['n_tokens']}")
            shards.append(ShardRef(path=path, key=ACTIVATIONS_KEY, shape=shape, n_tokens=rows))
        return ActivationSource(run_id=run_id, layer_signature=stored, d=d,
                                dtype=_torch_dtype(meta["dtype"], meta_path), shards=shards,
                                layout="saesweep", meta=meta)


# --------------------------------------------------------------------------------- mi_crow
_BATCH_DIR = re.compile(r"^batch_(\d+)$")
_BATCH_FILE = re.compile(r"^batch_(\d+)\.safetensors$")


def _mi_crow_batches(run: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    if not run.is_dir():
        return out
    for p in run.iterdir():
        m = _BATCH_DIR.match(p.name) if p.is_dir() else _BATCH_FILE.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def _resolve_layer(requested: str, present: Iterable[str], where: Path) -> str:
    present = sorted(set(present))
    if requested in present:
        return requested
    matches = [p for p in present if _same_layer(p, requested)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(f"{where}: layer {requested!r} not found; layers present: {present}")
    raise StoreError(f"{where}: layer {requested!r} is ambiguous, matches {matches}")


def _same_layer(stored: str, requested: str) -> bool:
    """Either spelling: dotted module path or mi_crow's flattened `<modelclass>_<path>` name.

    Only a model-class prefix may differ (one word, no '_' or '.'): `model.layers.3.synthetic`
    is not the layer `synthetic`."""
    a, b = flatten_layer_name(stored), flatten_layer_name(requested)
    if a == b:
        return True
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    prefix = longer[: -len(shorter) - 1]
    return longer.endswith("_" + shorter) and prefix.isalnum()


def _open_mi_crow(run_id: str, layer: str, run: Path) -> ActivationSource:
    meta_path = run / "meta.json"
    meta = _read_json(meta_path) if meta_path.exists() else {}
    batches = _mi_crow_batches(run)
    if not batches and (run / "detectors").is_dir():
        return _open_mi_crow_unified(run_id, layer, run, meta)
    if not batches:
        raise StoreError(f"{run}: empty store (no batch_<i>/ folders or batch files)")
    expected = range(max(batches) + 1)
    missing = [i for i in expected if i not in batches]
    if missing:
        raise StoreError(f"{run}: missing batch(es) {missing[:10]} (found {len(batches)} of "
                         f"batch_0..batch_{max(batches)})")

    dirs = [p for p in batches.values() if p.is_dir()]
    layers: set[str] = set()
    for p in dirs:
        layers.update(c.name for c in p.iterdir() if c.is_dir() and c.name != MASK_DIR)
    files = [p for p in batches.values() if p.is_file()]
    for p in files:
        layers.update(_old_file_layers(p))
    resolved = _resolve_layer(layer, layers, run)

    shards: list[ShardRef] = []
    for i in expected:
        p = batches[i]
        if p.is_dir():
            path = p / resolved / "activations.safetensors"
            if not path.exists():
                raise StoreError(f"{p}: batch has no activations for layer {resolved!r} "
                                 f"(missing {path})")
            mask = p / MASK_DIR / "attention_mask.safetensors"
            shards.append(_mi_crow_shard(path, "tensor", mask if mask.exists() else None,
                                         "tensor"))
        else:
            key = _old_file_key(p, resolved)
            with _open_safetensors(p) as f:
                has_mask = "attention_mask" in set(f.keys())
            shards.append(_mi_crow_shard(p, key, p if has_mask else None, "attention_mask"))
    return _mi_crow_source(run_id, resolved, run, shards, meta)


def _open_mi_crow_unified(run_id: str, layer: str, run: Path, meta: dict) -> ActivationSource:
    det = run / "detectors"
    layers = [c.name for c in det.iterdir() if c.is_dir() and c.name != MASK_DIR]
    resolved = _resolve_layer(layer, layers, det)
    path = det / resolved / "activations.safetensors"
    mask_path = det / MASK_DIR / "attention_mask.safetensors"
    with _open_safetensors(path) as f:
        keys = [k for k in list(f.keys()) if _BATCH_DIR.match(k)]
    keys.sort(key=lambda k: int(k[6:]))
    if not keys:
        raise StoreError(f"{path}: empty store (no batch_<i> tensors)")
    shards = [_mi_crow_shard(path, k, mask_path if mask_path.exists() else None, k) for k in keys]
    return _mi_crow_source(run_id, resolved, run, shards, meta)


def _mi_crow_source(run_id: str, layer: str, run: Path, shards: list[ShardRef],
                    meta: dict) -> ActivationSource:
    d = shards[0].shape[-1]
    for s in shards:
        if s.shape[-1] != d:
            raise StoreError(f"{s.path}: shard has d={s.shape[-1]}, other shards have d={d}")
    if sum(s.n_tokens for s in shards) == 0:
        raise StoreError(f"{run}: empty store (0 non-padding tokens)")
    with _open_safetensors(shards[0].path) as f:
        dtype = _torch_dtype(f.get_slice(shards[0].key).get_dtype(), shards[0].path)
    meta = dict(meta)
    meta.setdefault("model_id", meta.get("model"))
    return ActivationSource(run_id=run_id, layer_signature=layer, d=d, dtype=dtype,
                            shards=shards, layout="mi_crow", meta=meta)


def _mi_crow_shard(path: Path, key: str, mask_path: Path | None, mask_key: str) -> ShardRef:
    shape = _header_shape(path, key)
    if mask_path is None:
        return ShardRef(path=path, key=key, shape=shape, n_tokens=_numel(shape[:-1]))
    mask = _load_tensor(mask_path, mask_key)
    if tuple(mask.shape) != tuple(shape[:-1]):
        raise StoreError(f"{mask_path}: attention mask shape {tuple(mask.shape)} does not match "
                         f"activations {shape} in {path}")
    return ShardRef(path=path, key=key, shape=shape, mask_path=mask_path, mask_key=mask_key,
                    n_tokens=int(mask.bool().sum()))


def _old_file_layers(p: Path) -> list[str]:
    with _open_safetensors(p) as f:
        keys = list(f.keys())
    return [k.removeprefix("activations_") for k in keys if k.startswith("activations_")] or (
        ["activations"] if "activations" in keys else [])


def _old_file_key(p: Path, layer: str) -> str:
    with _open_safetensors(p) as f:
        keys = set(f.keys())
    for key in (f"activations_{layer}", layer, "activations"):
        if key in keys:
            return key
    raise StoreError(f"{p}: no tensor for layer {layer!r}; keys present: {sorted(keys)}")


# --------------------------------------------------------------------------------- helpers
def _open_safetensors(path: Path):  # noqa: ANN202 - safe_open's handle type is private
    if not path.exists():
        raise StoreError(f"{path}: file not found")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise StoreError(f"{path}: unreadable or truncated safetensors file ({e})") from e


def _header_shape(path: Path, key: str) -> tuple[int, ...]:
    with _open_safetensors(path) as f:
        present = set(f.keys())
        if key not in present:
            raise StoreError(f"{path}: no tensor {key!r}; keys present: {sorted(present)}")
        shape = tuple(f.get_slice(key).get_shape())
    if len(shape) not in (2, 3):
        raise StoreError(f"{path}: tensor {key!r} has shape {shape}; expected [tokens, d] or "
                         "[batch, seq, d]")
    return shape


def _header_dtype(path: Path, key: str) -> torch.dtype:
    with _open_safetensors(path) as f:
        return _torch_dtype(f.get_slice(key).get_dtype(), path)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _load_tensor(path: Path, key: str) -> torch.Tensor:
    with _open_safetensors(path) as f:
        try:
            return f.get_tensor(key)
        except (SafetensorError, OSError, KeyError) as e:
            raise StoreError(f"{path}: cannot read tensor {key!r} ({e})") from e


def _torch_dtype(name: str, where: Path) -> torch.dtype:
    if name in FLOAT_DTYPES:
        return FLOAT_DTYPES[name]
    dt = getattr(torch, str(name), None)
    if isinstance(dt, torch.dtype) and dt.is_floating_point:
        return dt
    raise StoreError(f"{where}: activations dtype {name!r} is not a floating-point type")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise StoreError(f"{path}: expected a JSON object")
    return data


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 3:
        return t.reshape(-1, t.shape[-1])
    if t.dim() != 2:
        raise StoreError(
            f"activations must be [tokens, d] or [batch, seq, d], got {tuple(t.shape)}")
    return t


def _split_rows(t: torch.Tensor, n: int) -> Iterator[torch.Tensor]:
    for start in range(0, t.shape[0], n):
        yield t[start:start + n]


def _numel(shape: Iterable[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _check_id(run_id: str) -> str:
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise ValueError(f"run id must be a non-empty name without '/', got {run_id!r}")
    return run_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
