"""mi_crow's layout, read only (what `mi_crow` 1.0's LocalStore writes when saving activations)::

    <base>/runs/<run_id>/meta.json                  # run_name, model, options, layer_signatures
    <base>/runs/<run_id>/batch_<i>/metadata.json
    <base>/runs/<run_id>/batch_<i>/<layer>/activations.safetensors            # "tensor" [B, T, D]
    <base>/runs/<run_id>/batch_<i>/attention_masks/attention_mask.safetensors # "tensor" bool [B, T]

plus its unified variant (``<base>/runs/<run_id>/detectors/<layer>/activations.safetensors`` with
keys ``batch_<i>``) and old single-file runs (``<base>/runs/<run_id>/batch_000000.safetensors``).
Padding positions (attention mask 0) are dropped: we never train on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from harness.core.store.source import (
    ActivationSource,
    ShardRef,
    StoreError,
    check_id,
    header_shape,
    load_tensor,
    numel,
    open_safetensors,
    read_json,
    same_layer,
    torch_dtype,
)

MASK_DIR = "attention_masks"


class MiCrowLayout:
    """`<base>/runs/<run_id>/`: batch folders (or files, or a unified detectors/ folder)."""

    name: ClassVar[str] = "mi_crow"

    def __init__(self, base: Path) -> None:
        self.base = Path(base)

    def run_path(self, run_id: str) -> Path:
        return self.base / "runs" / check_id(run_id)

    def runs(self) -> list[str]:
        return sorted(p.name for p in (self.base / "runs").glob("*")
                      if p.is_dir() and _mi_crow_batches(p))

    def holds(self, run_id: str) -> bool:
        run = self.run_path(run_id)
        return run.is_dir() and bool(_mi_crow_batches(run) or (run / "detectors").is_dir())

    def where(self, run_id: str) -> str:
        return f"mi_crow batches in {self.run_path(run_id)}"

    def open(self, run_id: str, layer_signature: str) -> ActivationSource:
        return _open_mi_crow(run_id, layer_signature, self.run_path(run_id))


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
    matches = [p for p in present if same_layer(p, requested)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(f"{where}: layer {requested!r} not found; layers present: {present}")
    raise StoreError(f"{where}: layer {requested!r} is ambiguous, matches {matches}")


def _open_mi_crow(run_id: str, layer: str, run: Path) -> ActivationSource:
    meta_path = run / "meta.json"
    meta = read_json(meta_path) if meta_path.exists() else {}
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
            with open_safetensors(p) as f:
                has_mask = "attention_mask" in set(f.keys())
            shards.append(_mi_crow_shard(p, key, p if has_mask else None, "attention_mask"))
    return _mi_crow_source(run_id, resolved, run, shards, meta)


def _open_mi_crow_unified(run_id: str, layer: str, run: Path, meta: dict) -> ActivationSource:
    det = run / "detectors"
    layers = [c.name for c in det.iterdir() if c.is_dir() and c.name != MASK_DIR]
    resolved = _resolve_layer(layer, layers, det)
    path = det / resolved / "activations.safetensors"
    mask_path = det / MASK_DIR / "attention_mask.safetensors"
    with open_safetensors(path) as f:
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
    with open_safetensors(shards[0].path) as f:
        dtype = torch_dtype(f.get_slice(shards[0].key).get_dtype(), shards[0].path)
    meta = dict(meta)
    meta.setdefault("model_id", meta.get("model"))
    return ActivationSource(run_id=run_id, layer_signature=layer, d=d, dtype=dtype,
                            shards=shards, layout=MiCrowLayout.name, meta=meta)


def _mi_crow_shard(path: Path, key: str, mask_path: Path | None, mask_key: str) -> ShardRef:
    shape = header_shape(path, key)
    if mask_path is None:
        return ShardRef(path=path, key=key, shape=shape, n_tokens=numel(shape[:-1]))
    mask = load_tensor(mask_path, mask_key)
    if tuple(mask.shape) != tuple(shape[:-1]):
        raise StoreError(f"{mask_path}: attention mask shape {tuple(mask.shape)} does not match "
                         f"activations {shape} in {path}")
    return ShardRef(path=path, key=key, shape=shape, mask_path=mask_path, mask_key=mask_key,
                    n_tokens=int(mask.bool().sum()))


def _old_file_layers(p: Path) -> list[str]:
    with open_safetensors(p) as f:
        keys = list(f.keys())
    return [k.removeprefix("activations_") for k in keys if k.startswith("activations_")] or (
        ["activations"] if "activations" in keys else [])


def _old_file_key(p: Path, layer: str) -> str:
    with open_safetensors(p) as f:
        keys = set(f.keys())
    for key in (f"activations_{layer}", layer, "activations"):
        if key in keys:
            return key
    raise StoreError(f"{p}: no tensor for layer {layer!r}; keys present: {sorted(keys)}")
