"""The activation-store protocol: one on-disk layout of activation runs under a base folder."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol

from harness.core.store.source import ActivationSource


class StoreLayout(Protocol):
    """Reads the activation runs of one layout under a base folder."""

    name: ClassVar[str]
    """Its registry name, recorded as ActivationSource.layout and in an SAE's meta.json."""

    def __init__(self, base: Path) -> None: ...

    def runs(self) -> list[str]:
        """The activation runs this layout holds under the base folder."""

    def holds(self, run_id: str) -> bool:
        """Whether `run_id` is a run of this layout (cheap: no shard is opened)."""

    def where(self, run_id: str) -> str:
        """Where this layout looks for `run_id` (for the message when no layout holds it)."""

    def open(self, run_id: str, layer_signature: str) -> ActivationSource:
        """Resolve and validate the run's shards for the layer; StoreError names the fault."""
