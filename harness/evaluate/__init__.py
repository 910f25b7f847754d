"""Downstream evaluation: splice SAEs into their language model (python -m harness.evaluate)."""

from harness.evaluate.downstream import (
    DownstreamConfig,
    DownstreamEvaluator,
    DownstreamMetrics,
    Reconstructor,
    sae_reconstructor,
)

__all__ = ["DownstreamConfig", "DownstreamEvaluator", "DownstreamMetrics", "Reconstructor",
           "sae_reconstructor"]
