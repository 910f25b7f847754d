"""A module's output at chosen positions of token sequences: what sparse probing and the
absorption metric embed their examples with."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from harness.data.models import LoadedModel, find_module


class _StopForward(Exception):  # noqa: N818 - a control signal
    """Raised by the hook: the layers after the hook point are not needed."""


@torch.no_grad()
def hidden_at(lm: LoadedModel, layer: str, sequences: Sequence[Sequence[int]],
              positions: Sequence[int], batch: int = 64) -> torch.Tensor:
    """[n, d] float32: `layer`'s output at `positions[i]` of `sequences[i]` (token ids, padded
    on the right: a causal model's positions before the padding do not see it). The forward
    pass stops at the hook point."""
    module = find_module(lm.model, layer, lm.name)
    captured: dict[str, torch.Tensor] = {}

    def hook(_m: torch.nn.Module, _i: object, output: object) -> None:
        captured["x"] = output[0] if isinstance(output, tuple) else output  # type: ignore[index]
        raise _StopForward

    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    device = next(lm.model.parameters()).device
    # similar lengths share a batch: less padding computed
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = torch.empty(0)
    handle = module.register_forward_hook(hook)
    try:
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            width = max(len(sequences[i]) for i in rows)
            ids = torch.tensor([list(sequences[i]) + [pad] * (width - len(sequences[i]))
                                for i in rows])
            with contextlib.suppress(_StopForward):
                lm.model(input_ids=ids.to(device))
            at = torch.tensor([positions[i] for i in rows])
            x = captured["x"][torch.arange(len(rows)), at].float().cpu()
            if out.numel() == 0:
                out = torch.empty(len(sequences), x.shape[1])
            out[torch.tensor(rows)] = x
    finally:
        handle.remove()
    return out
