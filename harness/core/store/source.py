"""What every activation-store layout produces: an ActivationSource (validated shards of one
run and layer), plus the errors and the safetensors and JSON readers the layouts share."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from harness.errors import SaesweepError

FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "F64": torch.float64}


class StoreError(SaesweepError):
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
    """The layout's registry name ("saesweep", "mi_crow")."""
    meta: dict[str, Any] = field(default_factory=dict)
    _checked: set[int] = field(default_factory=set, repr=False)
    _checked_pieces: set[tuple[int, int]] = field(default_factory=set, repr=False)
    _data_at: dict[int, int | None] = field(default_factory=dict, repr=False)
    participation: float | None = field(default=None, repr=False)
    """harness.core.store.statistics.participation_ratio, once measured."""

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
        t = load_tensor(ref.path, ref.key).reshape(-1, self.d)
        if ref.mask_path is not None:
            mask = load_tensor(ref.mask_path, ref.mask_key or "tensor").reshape(-1).bool()
            t = t[mask]
        if t.shape[0] != ref.n_tokens:
            raise StoreError(f"{ref.path}: expected {ref.n_tokens} tokens, read {t.shape[0]}")
        if i not in self._checked:
            _check_finite(ref, t)
            self._checked.add(i)
        return t

    def identity(self, n_shards: int) -> tuple[list[Path], tuple]:
        """(files, tensor keys) of its first `n_shards` shards: what decides the tokens they
        hold (the loader's cache key)."""
        refs = self.shards[:n_shards]
        files = [ref.path for ref in refs] + [ref.mask_path for ref in refs if ref.mask_path]
        return files, tuple((ref.key, ref.mask_key) for ref in refs)

    def sliceable(self, i: int) -> bool:
        """Whether shard `i` can be read a piece at a time ([tokens, d], no padding mask)."""
        ref = self.shards[i]
        return ref.mask_path is None and len(ref.shape) == 2

    def read_piece(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Tokens [start, stop) of shard `i` (the rows read_shard gives there). A [tokens, d]
        shard is read with one positioned read of just those rows and no read-ahead (through a
        memory map, each piece would read the device's whole read-ahead window); a padded
        [batch, seq, d] shard (mi_crow's) is read whole, then cut."""
        if not self.sliceable(i):
            return self.read_shard(i)[start:stop]
        ref = self.shards[i]
        stop = min(stop, ref.n_tokens)
        at = self._tensor_start(i)
        if at is None:  # a header this reader does not expect: safetensors' own slice
            with open_safetensors(ref.path) as f:
                try:
                    piece = f.get_slice(ref.key)[start:stop]
                except (SafetensorError, OSError) as e:
                    raise StoreError(f"{ref.path}: cannot read tensor {ref.key!r} ({e})") from e
        else:
            piece = torch.empty(max(0, stop - start), self.d, dtype=self.dtype)
            raw = memoryview(piece.view(torch.uint8).numpy()).cast("B")
            row = self.d * piece.element_size()
            try:
                with open(ref.path, "rb", buffering=0) as f:
                    if hasattr(os, "posix_fadvise"):  # no read-ahead past the piece
                        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
                    f.seek(at + start * row)
                    got = 0
                    while got < len(raw) and (n := f.readinto(raw[got:])):
                        got += n
            except OSError as e:
                raise StoreError(f"{ref.path}: cannot read tensor {ref.key!r} ({e})") from e
            if got != len(raw):
                raise StoreError(f"{ref.path}: truncated: tensor {ref.key!r} ends before token "
                                 f"{stop}")
        if i not in self._checked and (i, start) not in self._checked_pieces:
            _check_finite(ref, piece)  # once a run: later epochs read the same pieces again
            self._checked_pieces.add((i, start))
        return piece

    def _tensor_start(self, i: int) -> int | None:
        """The file offset of shard `i`'s first value, from its safetensors header (8 bytes of
        header length, the JSON header, then the data), or None where the header is not the
        plain [tokens, d] tensor in this source's dtype that a positioned read assumes."""
        if i not in self._data_at:
            ref = self.shards[i]
            at = None
            try:
                with open(ref.path, "rb") as f:
                    size = int.from_bytes(f.read(8), "little")
                    entry = json.loads(f.read(size)).get(ref.key, {})
                begin, end = entry.get("data_offsets", (0, -1))
                itemsize = torch.empty(0, dtype=self.dtype).element_size()
                if (sys.byteorder == "little" and FLOAT_DTYPES.get(entry.get("dtype")) == self.dtype
                        and tuple(entry.get("shape", ())) == ref.shape
                        and end - begin == math.prod(ref.shape) * itemsize):
                    at = 8 + size + begin
            except (OSError, ValueError):
                pass  # safetensors' own reader says what is wrong
            self._data_at[i] = at
        return self._data_at[i]

def _check_finite(ref: ShardRef, t: torch.Tensor) -> None:
    """StoreError naming the file when `t` (read from `ref`) holds NaN or inf."""
    # fast path: a NaN or inf makes the sum non-finite; a float32 sum that merely overflows on
    # huge values is cleared by the exact per-value check
    if not math.isfinite(float(t.sum(dtype=torch.float32))):
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        if bad:
            raise StoreError(f"{ref.path} (key {ref.key!r}): {bad} token(s) hold NaN or inf "
                             "activations")


def same_layer(stored: str, requested: str) -> bool:
    """Either spelling: dotted module path or mi_crow's flattened `<modelclass>_<path>` name.

    Only a model-class prefix may differ (one word, no '_' or '.'): `model.layers.3.synthetic`
    is not the layer `synthetic`."""
    a, b = flatten_layer_name(stored), flatten_layer_name(requested)
    if a == b:
        return True
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    prefix = longer[: -len(shorter) - 1]
    return longer.endswith("_" + shorter) and prefix.isalnum()


def open_safetensors(path: Path):  # noqa: ANN201 - safe_open's handle type is private
    if not path.exists():
        raise StoreError(f"{path}: file not found")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise StoreError(f"{path}: unreadable or truncated safetensors file ({e})") from e


def header_shape(path: Path, key: str) -> tuple[int, ...]:
    with open_safetensors(path) as f:
        present = set(f.keys())
        if key not in present:
            raise StoreError(f"{path}: no tensor {key!r}; keys present: {sorted(present)}")
        shape = tuple(f.get_slice(key).get_shape())
    if len(shape) not in (2, 3):
        raise StoreError(f"{path}: tensor {key!r} has shape {shape}; expected [tokens, d] or "
                         "[batch, seq, d]")
    return shape


def header_dtype(path: Path, key: str) -> torch.dtype:
    with open_safetensors(path) as f:
        return torch_dtype(f.get_slice(key).get_dtype(), path)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_tensor(path: Path, key: str) -> torch.Tensor:
    with open_safetensors(path) as f:
        try:
            return f.get_tensor(key)
        except (SafetensorError, OSError, KeyError) as e:
            raise StoreError(f"{path}: cannot read tensor {key!r} ({e})") from e


def torch_dtype(name: str, where: Path) -> torch.dtype:
    if name in FLOAT_DTYPES:
        return FLOAT_DTYPES[name]
    dt = getattr(torch, str(name), None)
    if isinstance(dt, torch.dtype) and dt.is_floating_point:
        return dt
    raise StoreError(f"{where}: activations dtype {name!r} is not a floating-point type")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise StoreError(f"{path}: expected a JSON object")
    return data


def numel(shape: Iterable[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def check_id(run_id: str) -> str:
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise ValueError(f"run id must be a non-empty name without '/', got {run_id!r}")
    return run_id
