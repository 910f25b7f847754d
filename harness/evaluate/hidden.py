"""A module's output at chosen positions of token sequences: what sparse probing and the
absorption metric embed their examples with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from harness.data.cache import cache_dir
from harness.data.models import LoadedModel, find_module
from harness.data.tap import ModuleTap


@torch.no_grad()
def hidden_at(lm: LoadedModel, layer: str, sequences: Sequence[Sequence[int]],
              positions: Sequence[int], batch: int = 64) -> torch.Tensor:
    """[n, d] float32: `layer`'s output at `positions[i]` of `sequences[i]` (token ids, padded
    on the right: a causal model's positions before the padding do not see it). The forward
    pass stops at the hook point (harness.data.tap)."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    device = next(lm.model.parameters()).device
    # similar lengths share a batch: less padding computed
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = torch.empty(0)
    with ModuleTap(find_module(lm.model, layer, lm.name)) as tap:
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            width = max(len(sequences[i]) for i in rows)
            ids = torch.tensor([list(sequences[i]) + [pad] * (width - len(sequences[i]))
                                for i in rows])
            tap.run(lm.model, input_ids=ids.to(device))
            at = torch.tensor([positions[i] for i in rows])
            x = tap.output[torch.arange(len(rows)), at].float().cpu()
            if out.numel() == 0:
                out = torch.empty(len(sequences), x.shape[1])
            out[torch.tensor(rows)] = x
    return out


def task_folder(kind: str, lm: LoadedModel, layer: str, cache: Path | None) -> Path:
    """Where a task's embeddings for this model and layer are cached: under `cache`, else the
    saesweep cache's `kind` folder."""
    return (cache or cache_dir(kind)) / f"{Path(lm.path).name}-{layer}"
