"""SAE activations: one protocol (base.Activation) and one registry.

A new activation is a file here with a class that follows the protocol, and one line in
ACTIVATIONS. The SAE, the trainer, memory estimates, packing and the search space read what
they need from it (docs/architecture.md shows a worked example).
"""

from __future__ import annotations

from harness.core.activations.base import Activation
from harness.core.activations.batchtopk import BatchTopK
from harness.core.activations.jumprelu import JumpRelu
from harness.core.activations.matryoshka import MatryoshkaBatchTopK
from harness.core.activations.relu import Relu
from harness.core.activations.topk import TopK

ACTIVATIONS: dict[str, type[Activation]] = {
    TopK.name: TopK,
    BatchTopK.name: BatchTopK,
    JumpRelu.name: JumpRelu,
    MatryoshkaBatchTopK.name: MatryoshkaBatchTopK,
    Relu.name: Relu,
}
"""Activation name -> its class."""

DEFAULT_ACTIVATION = TopK.name
"""What an SAE, a space and a trial record without `activation` mean."""

OPTIONS: dict[str, str] = {key: name for name, cls in ACTIVATIONS.items() for key in cls.options}
"""Each activation option's name -> the activation it belongs to (options are named uniquely)."""


def activation_class(name: str) -> type[Activation]:
    """The registered activation called `name`; ValueError naming the known ones otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {name!r}") from None


def check_penalty(activation: str, l0_lambda: float) -> None:
    """ValueError unless an L0 penalty, if any, goes to an activation that has one (JumpReLU)."""
    if l0_lambda and "l0_lambda" not in activation_class(activation).params:
        raise ValueError(f"l0_lambda needs activation jumprelu, not {activation!r}")


__all__ = ["ACTIVATIONS", "OPTIONS", "Activation", "activation_class", "check_penalty"]
