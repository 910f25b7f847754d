"""A forward hook on one module that keeps its output (and, if asked, its first input) and stops
the forward pass there, the layers after it not being needed: what the capture and the probing
tasks read activations with."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from harness.core.store import StoreError


class StopForward(Exception):  # noqa: N818 - a control signal
    """Raised by the hook once the module has run."""


class ModuleTap:
    """`with ModuleTap(module) as tap: tap.run(model, input_ids=...)`, then `tap.output` (and
    with `keep_input`, `tap.input`) hold the module's last call."""

    def __init__(self, module: torch.nn.Module, keep_input: bool = False,
                 what: str = "the module") -> None:
        self.module, self.keep_input, self.what = module, keep_input, what
        self.output = self.input = torch.empty(0)

    def __enter__(self) -> ModuleTap:
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def run(self, model: torch.nn.Module, **inputs: Any) -> None:
        """The model's forward pass up to the module."""
        with contextlib.suppress(StopForward):
            model(**inputs)

    def _hook(self, _module: torch.nn.Module, inputs: Any, output: Any) -> None:
        self.output = output[0] if isinstance(output, tuple) else output
        if self.keep_input:
            if not inputs or not isinstance(inputs[0], torch.Tensor):
                raise StoreError(f"{self.what} is called without a tensor as its first "
                                 "positional input; hook another module")
            self.input = inputs[0]
        raise StopForward
