"""SAE activations: one protocol (base.Activation) and one registry.

A new activation is a file here with a class that follows the protocol, and one line in
ACTIVATIONS. The SAE, the trainer, memory estimates, packing and the search space read what
they need from it (docs/architecture.md shows a worked example).
"""

from __future__ import annotations

from harness.core.activations.base import Activation
from harness.core.activations.batchtopk import BatchTopK
from harness.core.activations.topk import TopK

ACTIVATIONS: dict[str, type[Activation]] = {
    TopK.name: TopK,
    BatchTopK.name: BatchTopK,
}
"""Activation name -> its class."""


def activation_class(name: str) -> type[Activation]:
    """The registered activation called `name`; ValueError naming the known ones otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {name!r}") from None


__all__ = ["ACTIVATIONS", "Activation", "activation_class"]
