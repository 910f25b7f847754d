"""Activation stores on local disk: one protocol (layout.StoreLayout), one registry (LAYOUTS),
one facade (LocalStore) and one constructor (open_store).

A base folder may hold runs of any registered layout: our own (`ours.py`, read and written) and
mi_crow's (`mi_crow.py`, read). `LocalStore.open` asks each layout in registry order whether it
holds the run. A new layout is a file here with a class that follows StoreLayout, and one line
in LAYOUTS (docs/architecture.md shows a worked example).

Opening a run validates every shard's header (cheap: safetensors reads only the header), so a
truncated or inconsistent file is reported by name before any training starts. Values are checked
for NaN/inf when a shard is first read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from harness.core.store.layout import StoreLayout
from harness.core.store.mi_crow import MiCrowLayout
from harness.core.store.ours import SaesweepLayout
from harness.core.store.pairs import PairedSource, paired
from harness.core.store.source import (
    FLOAT_DTYPES,
    ActivationSource,
    ShardRef,
    StoreError,
    check_id,
    flatten_layer_name,
)

LAYOUTS: dict[str, type[StoreLayout]] = {
    SaesweepLayout.name: SaesweepLayout,
    MiCrowLayout.name: MiCrowLayout,
}
"""Layout name -> its reader, in the order a run is looked up."""

__all__ = ["FLOAT_DTYPES", "LAYOUTS", "ActivationSource", "LocalStore", "PairedSource",
           "ShardRef", "StoreError", "StoreLayout", "flatten_layer_name", "open_store"]


class LocalStore:
    """Activation runs (of every registered layout) and training runs under one base folder."""

    def __init__(self, base_path: str | Path) -> None:
        self.base_path = Path(base_path)
        self.layouts = [cls(self.base_path) for cls in LAYOUTS.values()]
        # the layout this store writes: ours, one of the registered readers
        self._ours = next(lay for lay in self.layouts if isinstance(lay, SaesweepLayout))

    def activation_dir(self, run_id: str) -> Path:
        """Where our layout keeps `run_id`'s activations."""
        return self._ours.run_path(run_id)

    def run_dir(self, run_id: str) -> Path:
        """`<base>/runs/<run_id>`: mi_crow's activation runs and our SAE training runs."""
        return self.base_path / "runs" / check_id(run_id)

    def list_activation_runs(self) -> list[str]:
        """Runs holding activations, in any layout."""
        return list(dict.fromkeys(run for layout in self.layouts for run in layout.runs()))

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
        return self._ours.put(run_id, layer_signature, activations, meta,
                              shard_tokens=shard_tokens, dtype=dtype)

    def open(self, run_id: str, layer_signature: str) -> ActivationSource:
        """Resolve and validate the shards of (run_id, layer_signature) in whichever registered
        layout holds the run."""
        for layout in self.layouts:
            if layout.holds(run_id):
                return layout.open(run_id, layer_signature)
        looked = " and for ".join(layout.where(run_id) for layout in self.layouts)
        present = self.list_activation_runs()
        raise StoreError(f"no activation run {run_id!r} under {self.base_path}: looked for "
                         f"{looked}; runs present: {present or 'none'}")

    def open_pair(self, run_id: str, layer_signature: str,
                  target_layer_signature: str) -> PairedSource:
        """A transcoder's data: two layers of one run, aligned row for row, as one source of
        [input | target] rows (harness.core.store.pairs)."""
        return paired(self.open(run_id, layer_signature),
                      self.open(run_id, target_layer_signature))


def open_store(store: LocalStore | str | Path) -> LocalStore:
    """The one place a store is made from a path (a LocalStore is returned as it is)."""
    return store if isinstance(store, LocalStore) else LocalStore(store)
