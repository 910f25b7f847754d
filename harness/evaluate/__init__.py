"""Downstream evaluation: splice SAEs into their language model (python -m harness.evaluate).
Names are imported when first used, so the command's --help starts at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)
