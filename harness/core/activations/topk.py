"""TopK (Gao et al. 2024): each token keeps its k largest pre-activations."""

from __future__ import annotations

from typing import ClassVar

from harness.core.activations.base import ActivationBase


class TopK(ActivationBase):
    """Exactly k candidates per token, all kept (ReLU zeros included)."""

    name: ClassVar[str] = "topk"
    supports_encoder_refit: ClassVar[bool] = True
