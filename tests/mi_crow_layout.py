"""Writes activation runs in mi_crow 1.0.0.post10's on-disk layout, byte for byte as its
LocalStore.put_detector_metadata / put_run_metadata / put_run_detector_metadata do (read from
mi_crow's source), without importing mi_crow (it pulls in transformers)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

MODEL_CLASS = "gpt2lmheadmodel"


def flat(layer: str) -> str:
    return f"{MODEL_CLASS}_{layer}".replace(".", "_")


def write_run_meta(base: Path, run_id: str, layers: list[str]) -> None:
    run = base / "runs" / run_id
    run.mkdir(parents=True, exist_ok=True)
    meta = {"run_name": run_id, "model": "GPT2LMHeadModel",
            "options": {"batch_size": 2, "max_length": 6},
            "layer_signatures": layers, "num_layers": len(layers)}
    (run / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2))


def write_batch(base: Path, run_id: str, index: int, acts: dict[str, torch.Tensor],
                mask: torch.Tensor | None) -> None:
    """One `batch_<index>/` folder: per layer `activations.safetensors` ({"tensor": [B,T,D]}),
    and `attention_masks/attention_mask.safetensors` ({"tensor": bool [B,T]}) if given."""
    batch = base / "runs" / run_id / f"batch_{index}"
    batch.mkdir(parents=True, exist_ok=True)
    tensors = {layer: {"activations": t} for layer, t in acts.items()}
    if mask is not None:
        tensors["attention_masks"] = {"attention_mask": mask}
    metadata = {layer: {"activations_shape": list(t.shape)} for layer, t in acts.items()}
    metadata["_tensor_metadata_names"] = {k: list(v) for k, v in tensors.items()}
    (batch / "metadata.json").write_text(json.dumps(metadata, ensure_ascii=False, indent=2))
    for layer, items in tensors.items():
        (batch / layer).mkdir(exist_ok=True)
        for key, t in items.items():
            save_file({"tensor": t.clone().detach()}, str(batch / layer / f"{key}.safetensors"))


def padded_batches(n_batches: int, d: int, layer: str, seed: int = 0,
                   dtype: torch.dtype = torch.float32):
    """Batches of 2 texts with different lengths, right-padded to the longest (T varies per
    batch). Padding positions hold a large sentinel (1e4) so a test can see if any leaks."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        lengths = [3 + (i % 3), 6]
        t_max = max(lengths)
        acts = torch.randn(2, t_max, d, generator=gen)
        mask = torch.zeros(2, t_max, dtype=torch.bool)
        for b, n in enumerate(lengths):
            mask[b, :n] = True
        acts[~mask] = 1e4
        out.append(({flat(layer): acts.to(dtype)}, mask))
    return out


def write_padded_run(base: Path, run_id: str, layer: str, n_batches: int = 6, d: int = 8,
                     dtype: torch.dtype = torch.float32) -> int:
    """A whole padded run; returns the number of real (non-padding) tokens."""
    write_run_meta(base, run_id, [flat(layer)])
    real = 0
    for i, (acts, mask) in enumerate(padded_batches(n_batches, d, layer, dtype=dtype)):
        write_batch(base, run_id, i, acts, mask)
        real += int(mask.sum())
    return real
