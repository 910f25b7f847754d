"""The SAE-activation protocol: what an activation function owns.

An activation decides which latents of a token are active, given the encoder's pre-activations.
Each batch, the SAE asks it how many candidates a token needs (`width`: a fixed k for TopK, the
largest count above a cut for ReLU and JumpReLU, or None for every latent), gathers each token's
top candidates (on the sparse path it backpropagates through those only), applies ReLU, and asks
the activation which of them to keep (`select`). Whatever state the activation learns (BatchTopK's
inference threshold, JumpReLU's thresholds) it registers on the SAE in `attach`, saves in
`tensors` and describes in `config`; its construction options (Matryoshka's prefixes) come from
cfg.json or a space by the names in `options`. Its training objective beyond the plain
reconstruction error (Matryoshka's prefix losses, JumpReLU's L0 penalty) is `reconstruction_loss`
and `l0_penalty`. So one SAE class and one trainer serve every activation.

`ActivationBase` gives the defaults of a TopK-like activation; a new one overrides what differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from harness.core.sae import SaeOutput, SparseAutoencoder


class Activation(Protocol):
    """One activation function (see the module docstring)."""

    name: ClassVar[str]
    """Its registry name: `activation:` in a space and in the trial record."""
    saelens_name: ClassVar[str]
    """`architecture` in cfg.json: SAELens' name where SAELens has the architecture."""
    params: ClassVar[frozenset[str]]
    """The sampled parameters it needs (a space must give them): k, l1_lambda, l0_lambda."""
    options: ClassVar[dict[str, Any]]
    """Its construction options and their defaults (keyword arguments of the class, saved in
    cfg.json, and parameters of a space under the same names)."""
    uses_k: ClassVar[bool]
    """Whether k sets its L0 ("k" in params; False: L0 comes out of training, and the SAE has
    no k)."""
    supports_decoder_refit: ClassVar[bool]
    """Whether the least-squares decoder refit fits its objective."""
    supports_encoder_refit: ClassVar[bool]
    """Whether the encoder refit's model (each token's fixed top-k set) describes it."""

    def attach(self, sae: SparseAutoencoder) -> None:
        """Register its parameters or buffers on `sae` (before the SAE moves or loads)."""

    def begin_training(self, sae: SparseAutoencoder, scale: float) -> None:
        """Called once before training (and again on resume, before the checkpoint loads);
        `scale` is the data's standard deviation per element, sqrt(mean((x - mean)^2))."""

    def candidates(self, k: int | None, n_latents: int) -> int:
        """The most latents per token a forward gathers: what memory estimates count."""

    def lr_scales(self, sae: SparseAutoencoder) -> list[tuple[torch.nn.Parameter, float]]:
        """Its parameters that train at a multiple of the learning rate, with the multiple."""

    def width(self, sae: SparseAutoencoder, pre: torch.Tensor) -> int | None:
        """Candidates per token for this batch's pre-activations [B, n] (no graph); None = every
        latent (a dense forward and backward)."""

    def ranking(self, sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor | None:
        """What a token's candidates are the top `width` of: None = the pre-activations
        themselves; JumpReLU ranks by the margin over each latent's own threshold."""

    def select(self, sae: SparseAutoencoder, values: torch.Tensor,
               indices: torch.Tensor) -> torch.Tensor:
        """The activations to keep among a batch's candidates [B, m] (after ReLU) at latents
        `indices` [B, m]; zero the rest. Called with gradients while training, without at
        inference."""

    def reconstruction_loss(self, sae: SparseAutoencoder, x: torch.Tensor, out: SaeOutput,
                            mse: torch.Tensor) -> torch.Tensor:
        """The reconstruction term of the training loss, given the plain MSE of `out`."""

    def l0_penalty(self, sae: SparseAutoencoder, out: SaeOutput) -> torch.Tensor:
        """Mean over tokens of a differentiable count of active latents (JumpReLU); others
        raise: `l0_lambda` needs an activation that has one."""

    def tensors(self, sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
        """Its saved tensors, by their name in sae_weights.safetensors."""

    def restore(self, sae: SparseAutoencoder, saved: dict[str, torch.Tensor]) -> None:
        """Set its state on `sae` from the tensors `tensors` saved."""

    def config(self, sae: SparseAutoencoder) -> dict[str, Any]:
        """Its fields in cfg.json (its options included)."""


class ActivationBase:
    """Defaults of the protocol: k candidates, all kept, no state, no options, plain MSE."""

    name: ClassVar[str] = ""
    saelens_name: ClassVar[str] = ""  # empty: the registry name
    params: ClassVar[frozenset[str]] = frozenset({"k"})
    options: ClassVar[dict[str, Any]] = {}
    uses_k: ClassVar[bool] = True  # set from params for every subclass
    supports_decoder_refit: ClassVar[bool] = True
    supports_encoder_refit: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.uses_k = "k" in cls.params  # one fact: k is among the parameters it needs

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(f"activation {self.name!r} takes options {sorted(self.options)}, "
                             f"got {sorted(unknown)}")
        for key, default in self.options.items():
            setattr(self, key, options.get(key, default))

    def attach(self, sae: SparseAutoencoder) -> None:
        pass

    def begin_training(self, sae: SparseAutoencoder, scale: float) -> None:
        pass

    def candidates(self, k: int | None, n_latents: int) -> int:
        return min(int(k or n_latents), n_latents)

    def lr_scales(self, sae: SparseAutoencoder) -> list[tuple[torch.nn.Parameter, float]]:
        return []

    def width(self, sae: SparseAutoencoder, pre: torch.Tensor) -> int | None:
        return self.candidates(sae.k, sae.n_latents)

    def ranking(self, sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor | None:
        return None

    def select(self, sae: SparseAutoencoder, values: torch.Tensor,
               indices: torch.Tensor) -> torch.Tensor:
        return values

    def reconstruction_loss(self, sae: SparseAutoencoder, x: torch.Tensor, out: SaeOutput,
                            mse: torch.Tensor) -> torch.Tensor:
        return mse

    def l0_penalty(self, sae: SparseAutoencoder, out: SaeOutput) -> torch.Tensor:
        raise ValueError(f"activation {self.name!r} has no L0 penalty: l0_lambda needs "
                         "activation jumprelu")

    def tensors(self, sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
        return {}

    def restore(self, sae: SparseAutoencoder, saved: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, value in saved.items():
                getattr(sae, key).copy_(value)

    def config(self, sae: SparseAutoencoder) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.options}


DENSE_SHARE = 0.125
"""Above this share of the latents per token, a gathered (sparse) step costs more than a dense
one: the top-m selection and the gathered backward grow with m, the dense products do not
(scripts/bench_widths.py measures the crossover: docs/architectures.md)."""


def width_above(pre: torch.Tensor, cut: torch.Tensor | float) -> int | None:
    """A width for activations whose L0 is not fixed: the largest number of a row's entries
    above `cut` (at least 1), or None (dense) above DENSE_SHARE of the latents. Reading it waits
    for the device once a step."""
    m = max(1, int((pre > cut).sum(-1).max()))
    return None if m > DENSE_SHARE * pre.shape[-1] else m
