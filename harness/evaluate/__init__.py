"""Downstream evaluation: splice SAEs into their language model (python -m harness.evaluate).
Names are imported when first used, so the command's --help starts at once."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"DownstreamConfig": "harness.evaluate.config",
            "DownstreamEvaluator": "harness.evaluate.downstream",
            "DownstreamMetrics": "harness.evaluate.downstream",
            "Reconstructor": "harness.evaluate.downstream",
            "sae_reconstructor": "harness.evaluate.downstream"}
__all__ = ["DownstreamConfig", "DownstreamEvaluator", "DownstreamMetrics", "Reconstructor",
           "sae_reconstructor"]

if TYPE_CHECKING:
    from harness.evaluate.config import DownstreamConfig
    from harness.evaluate.downstream import (
        DownstreamEvaluator,
        DownstreamMetrics,
        Reconstructor,
        sae_reconstructor,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness.evaluate' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
