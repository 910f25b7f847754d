"""The benchmarks' split of an activation run: its last tokens held out, the rest copied into a
temporary store that the trainers read (scripts/bench_quality.py, scripts/bench_finish.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import torch

from harness.core.store import LocalStore


class Split(NamedTuple):
    """Training tokens in a store of their own, and the held-out tokens in memory."""

    store: Path
    """The temporary store; its run is "train"."""
    heldout: torch.Tensor
    """[heldout, d] float32."""
    n_train: int
    """Tokens in the training run."""
    d: int
    """Activation width (a transcoder's input's)."""
    d_out: int = 0
    """A transcoder's target width (the held-out rows hold [input | target]); 0 for SAEs."""


def split_run(store: str, run_id: str, layer: str, heldout: int, into: Path,
              use_tokens: int | None = None, target_layer: str | None = None) -> Split:
    """The first `use_tokens` tokens of the run (all by default): the last `heldout` of them held
    out, the others written to `into` as run "train" (with `target_layer`, both layers)."""
    source = (LocalStore(store).open(run_id, layer) if target_layer is None
              else LocalStore(store).open_pair(run_id, layer, target_layer))
    parts, have = [], 0
    for i in range(len(source.shards)):
        parts.append(source.read_shard(i))
        have += parts[-1].shape[0]
        if use_tokens is not None and have >= use_tokens:
            break
    x = torch.cat(parts)[:use_tokens]
    if x.shape[0] <= heldout:
        raise SystemExit(f"{store}: {x.shape[0]} tokens, not more than --heldout {heldout}")
    d = source.n_inputs if target_layer else x.shape[1]
    LocalStore(into).put_activations("train", layer, x[:-heldout, :d])
    if target_layer:
        LocalStore(into).put_activations("train", target_layer, x[:-heldout, d:])
    return Split(into, x[-heldout:].float(), x.shape[0] - heldout, d, x.shape[1] - d)


def add_run_arguments(p: argparse.ArgumentParser, use_tokens: bool = True) -> None:
    """The options the quality benchmarks share: the run, the SAE's shape and the split."""
    p.add_argument("--store", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--layer", required=True)
    p.add_argument("--n-latents", type=int, default=3072)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--heldout", type=int, default=32768, help="last tokens held out")
    if use_tokens:
        p.add_argument("--use-tokens", type=int,
                       help="use only the run's first this many tokens (held-out ones included)")
    p.add_argument("--seed", type=int, default=0)
