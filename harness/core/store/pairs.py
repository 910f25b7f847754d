"""Aligned (input, target) activations for transcoders: two layers of one run whose rows are the
same tokens, read side by side as one [tokens, d_in + d_out] source.

Because each row holds a token's input and target together, everything the loader does to rows
(the held-out split, the shuffles, streaming, the token cache, resuming at a batch) keeps the two
aligned by construction; the SAE splits a batch into its two parts
(`SparseAutoencoder.split_batch`). Both layers must have been written shard for shard together
(the capture does: `harness.data.capture`, `--pair`), so a mismatch of shard sizes is refused with
both layers named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.core.store.source import ActivationSource, StoreError


@dataclass
class PairedSource(ActivationSource):
    """An input layer and a target layer of one run, as one source of [input | target] rows."""

    input: ActivationSource | None = field(default=None, repr=False)
    """The layer the transcoder reads."""
    target: ActivationSource | None = field(default=None, repr=False)
    """The layer it reconstructs."""

    @property
    def n_inputs(self) -> int:
        assert self.input is not None
        return self.input.d

    @property
    def n_outputs(self) -> int:
        assert self.target is not None
        return self.target.d

    @property
    def target_layer_signature(self) -> str:
        assert self.target is not None
        return self.target.layer_signature

    def read_shard(self, i: int) -> torch.Tensor:
        assert self.input is not None and self.target is not None
        return torch.cat([self.input.read_shard(i).to(self.dtype),
                          self.target.read_shard(i).to(self.dtype)], dim=1)

    def sliceable(self, i: int) -> bool:
        assert self.input is not None and self.target is not None
        return self.input.sliceable(i) and self.target.sliceable(i)

    def read_piece(self, i: int, start: int, stop: int) -> torch.Tensor:
        assert self.input is not None and self.target is not None
        return torch.cat([self.input.read_piece(i, start, stop).to(self.dtype),
                          self.target.read_piece(i, start, stop).to(self.dtype)], dim=1)

    def identity(self, n_shards: int) -> tuple[list[Path], tuple]:
        assert self.input is not None and self.target is not None
        files_in, keys_in = self.input.identity(n_shards)
        files_out, keys_out = self.target.identity(n_shards)
        return [*files_in, *files_out], (keys_in, keys_out)


def paired(input_source: ActivationSource, target: ActivationSource) -> PairedSource:
    """The two layers as one source; StoreError when their rows cannot be the same tokens."""
    where = (f"activation run {input_source.run_id!r}: layers {input_source.layer_signature!r} "
             f"and {target.layer_signature!r}")
    if input_source.layer_signature == target.layer_signature:
        raise StoreError(f"{where}: a transcoder's input and target must be different layers")
    sizes_in = [ref.n_tokens for ref in input_source.shards]
    sizes_out = [ref.n_tokens for ref in target.shards]
    if sizes_in != sizes_out:
        raise StoreError(f"{where} are not aligned: their shards hold {sum(sizes_in)} and "
                         f"{sum(sizes_out)} tokens in {len(sizes_in)} and {len(sizes_out)} "
                         "shards; capture both in one run (python -m harness.capture --pair)")
    dtype = (input_source.dtype if input_source.dtype == target.dtype else torch.float32)
    return PairedSource(run_id=input_source.run_id, layer_signature=input_source.layer_signature,
                        d=input_source.d + target.d, dtype=dtype, shards=input_source.shards,
                        layout=input_source.layout, meta=input_source.meta,
                        input=input_source, target=target)
