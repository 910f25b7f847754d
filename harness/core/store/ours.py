"""Our own layout, read and written::

    <base>/activations/<run_id>/meta.json
    <base>/activations/<run_id>/shard_00000.safetensors   # one tensor "activations" [tokens, d]
    <base>/activations/<run_id>/<other_layer>/shard_00000.safetensors   # further layers

A run's first layer is described at the top of meta.json; further layers of the same tokens
(a module's input beside its output, for transcoders) under `layers`, each with its own `d`,
`dtype`, `n_tokens` and `shards`, its files in a folder named after the layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.core.atomic import write_json, write_safetensors
from harness.core.store.source import (
    ActivationSource,
    ShardRef,
    StoreError,
    check_id,
    dtype_name,
    flatten_layer_name,
    header_dtype,
    header_shape,
    numel,
    read_json,
    same_layer,
    torch_dtype,
)

FORMAT = "saesweep.activations/1"
ACTIVATIONS_KEY = "activations"
RESERVED_META_KEYS = {"format", "run_id", "layer_signature", "d", "dtype", "n_tokens", "shards",
                      "created", "updated", "layers"}
LAYER_KEYS = ("d", "dtype", "n_tokens", "shards")
"""What each layer of a run records."""


class SaesweepLayout:
    """`<base>/activations/<run_id>/`: meta.json and [tokens, d] shards."""

    name: ClassVar[str] = "saesweep"

    def __init__(self, base: Path) -> None:
        self.base = Path(base)

    def run_path(self, run_id: str) -> Path:
        return self.base / "activations" / check_id(run_id)

    def runs(self) -> list[str]:
        return sorted(p.parent.name for p in (self.base / "activations").glob("*/meta.json"))

    def holds(self, run_id: str) -> bool:
        return (self.run_path(run_id) / "meta.json").exists()

    def where(self, run_id: str) -> str:
        return str(self.run_path(run_id) / "meta.json")

    def open(self, run_id: str, layer_signature: str) -> ActivationSource:
        meta_path = self.run_path(run_id) / "meta.json"
        meta = read_json(meta_path)
        for key in ("layer_signature", *LAYER_KEYS):
            if key not in meta:
                raise StoreError(f"{meta_path}: missing key {key!r}")
        stored, entry = _find_layer(meta, layer_signature)
        if entry is None:
            raise StoreError(f"{meta_path}: layer {layer_signature!r} not in run {run_id!r}; "
                             f"layers present: {layer_names(meta)}")
        where = f"{meta_path} (layer {stored!r})" if entry is not meta else str(meta_path)
        for key in LAYER_KEYS:
            if key not in entry:
                raise StoreError(f"{where}: missing key {key!r}")
        if not entry["shards"] or entry["n_tokens"] == 0:
            raise StoreError(f"{where}: empty store (no shards / 0 tokens)")
        d = int(entry["d"])
        shards = []
        for item in entry["shards"]:
            path = meta_path.parent / item["file"]
            shape = header_shape(path, ACTIVATIONS_KEY)
            stored_dtype = header_dtype(path, ACTIVATIONS_KEY)
            if stored_dtype != torch_dtype(entry["dtype"], meta_path):
                raise StoreError(f"{path}: shard holds {dtype_name(stored_dtype)} but "
                                 f"{where} says dtype {entry['dtype']!r}")
            if shape[-1] != d:
                raise StoreError(f"{path}: shard has d={shape[-1]} but {where} says d={d}")
            rows = numel(shape[:-1])
            if rows != item["n_tokens"]:
                raise StoreError(f"{path}: shard holds {rows} tokens, {where} says "
                                 f"{item['n_tokens']}")
            shards.append(ShardRef(path=path, key=ACTIVATIONS_KEY, shape=shape, n_tokens=rows))
        return ActivationSource(run_id=run_id, layer_signature=stored, d=d,
                                dtype=torch_dtype(entry["dtype"], meta_path), shards=shards,
                                layout=self.name, meta=meta)

    def put(self, run_id: str, layer_signature: str,
            activations: torch.Tensor | Iterable[torch.Tensor],
            meta: Mapping[str, Any] | None = None, *, shard_tokens: int = 65536,
            dtype: torch.dtype | None = None) -> dict[str, Any]:
        """Append activations to the run; see LocalStore.put_activations."""
        run = self.run_path(run_id)
        meta_path = run / "meta.json"
        extra = dict(meta or {})
        clash = RESERVED_META_KEYS & extra.keys()
        if clash:
            raise ValueError(f"meta keys {sorted(clash)} are set by the store; use other names")
        if meta_path.exists():
            current = read_json(meta_path)
        else:
            current = {"format": FORMAT, "run_id": run_id, "layer_signature": layer_signature,
                       "model_id": None, "d": None, "dtype": None, "n_tokens": 0, "shards": [],
                       "created": _now()}
        current.update(extra)
        # the run's first layer lives at the top of meta.json, any other under `layers`
        if current.get("layer_signature") == layer_signature:
            layer, folder = current, ""
        else:
            layer = current.setdefault("layers", {}).setdefault(
                layer_signature, {"d": None, "dtype": None, "n_tokens": 0, "shards": []})
            folder = flatten_layer_name(layer_signature) + "/"

        tensors = [activations] if isinstance(activations, torch.Tensor) else activations
        for tensor in tensors:
            for piece in _split_rows(_as_rows(tensor), shard_tokens):
                if dtype is not None:
                    piece = piece.to(dtype)
                if not piece.is_floating_point():
                    raise StoreError(f"activations must be floating point, got {piece.dtype}")
                if layer["d"] is None:
                    layer["d"] = int(piece.shape[1])
                    layer["dtype"] = dtype_name(piece.dtype)
                if piece.shape[1] != layer["d"]:
                    raise StoreError(f"{meta_path}: run has d={layer['d']}, got a tensor with "
                                     f"d={piece.shape[1]}")
                if dtype_name(piece.dtype) != layer["dtype"]:
                    raise StoreError(f"{meta_path}: run has dtype {layer['dtype']}, got "
                                     f"{piece.dtype} (pass dtype= to convert)")
                if not bool(torch.isfinite(piece).all()):
                    raise StoreError(f"refusing to write NaN/inf activations to {run}")
                name = f"{folder}shard_{len(layer['shards']):05d}.safetensors"
                write_safetensors(run / name, {ACTIVATIONS_KEY: piece})
                layer["shards"].append({"file": name, "n_tokens": int(piece.shape[0])})
                layer["n_tokens"] += int(piece.shape[0])
                current["updated"] = _now()
                write_json(meta_path, current)
        if not meta_path.exists():
            write_json(meta_path, current)
        return current


def _find_layer(meta: dict[str, Any], requested: str) -> tuple[str, dict[str, Any] | None]:
    """(the stored name, its entry: meta itself for the first layer) of `requested`."""
    if same_layer(meta["layer_signature"], requested):
        return meta["layer_signature"], meta
    for name, entry in (meta.get("layers") or {}).items():
        if same_layer(name, requested):
            return name, entry
    return requested, None


def layer_names(meta: dict[str, Any]) -> list[str]:
    """Every layer a run's meta.json describes, the first one first."""
    return [meta["layer_signature"], *(meta.get("layers") or {})]


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
