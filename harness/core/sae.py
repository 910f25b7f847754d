"""The sparse autoencoder: TopK after Gao et al. 2024, "Scaling and evaluating sparse
autoencoders", and every other activation of the registry on the same weights.

- the input is centred by the pre-encoder bias `b_dec` (initialised from the data);
- latents are ReLU of the top-k encoder pre-activations, all others are zero;
- the encoder starts as the transpose of a random unit-norm decoder, scaled to row norm 1/sqrt(3)
  (nn.Linear's default scale, as sparsify; why: docs/experiments.md);
- decoder rows are kept at unit norm after every step, minus their gradients' parallel part
  (the least-squares finish, harness.core.training.refit, sets them at the data's scale);
- an auxiliary loss (AuxK) lets dead latents model the residual error.

A transcoder (`transcoder=True`, `n_outputs` other than `n_inputs`, or `skip=True`) reads one
activation and reconstructs another through the same sparse code: its decoder is [d_sae, d_out],
`b_dec` lives in the output space and is not subtracted from the input (SAELens' transcoders do
the same; the trainer starts `b_enc` at the centring instead). `skip=True` adds a linear map
`W_skip` [d_out, d_in] from input to output, started at zero (SAELens' SkipTranscoder).

`activation` names how a token's active latents are chosen (harness.core.activations,
docs/architectures.md); the SAE gathers each token's candidates, as many as the activation asks
for, and the activation keeps some. For "jumprelu" and "relu" training sets L0 and k is None.

Weights are stored with SAELens' names and shapes (`W_enc` [d_in, d_sae], `b_enc`, `W_dec`
[d_sae, d_out], `b_dec`, `W_skip`) in `sae_weights.safetensors` beside a `cfg.json` in SAELens
6.x's inference form. No pickles anywhere. Other tools' folders: harness.core.sae_formats.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.activations import DEFAULT_ACTIVATION, activation_class
from harness.core.atomic import write_json, write_safetensors
from harness.core.centering import data_center, geometric_median
from harness.core.metrics import DeadLatents
from harness.core.readback import CorruptFile, check_shapes
from harness.core.seeding import stream_seed
from harness.core.shape import k_problem
from harness.core.sparse_ops import gather_preacts

WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_FORMAT = "6.54.12"
"""The SAELens release whose cfg.json a saved folder follows (tests/test_interop_saelens.py loads
every activation's folder with it)."""
DEFAULT_ENCODER_INIT_SCALE = 1 / math.sqrt(3)  # nn.Linear's default row norm, for any d_in
CONFIG_FILE = "cfg.json"


class SaeOutput(NamedTuple):
    """What one forward pass produces."""

    reconstruction: torch.Tensor
    """[B, d_in] decoded input."""
    top_values: torch.Tensor
    """[B, m] latent activations of each token's m candidates (m = k for TopK, 4k for BatchTopK,
    a per-batch width or every latent for ReLU and JumpReLU); unselected candidates are zero."""
    top_indices: torch.Tensor
    """[B, m] latent indices of those values."""
    pre_acts: torch.Tensor
    """[B, d_sae] encoder pre-activations (AuxK picks dead latents from these). On the sparse
    path they carry no graph: gradients flow only through the chosen entries."""
    centered: torch.Tensor
    """[B, d_in] the input minus b_dec (what the encoder saw)."""
    candidate_values: torch.Tensor | None = None
    """[B, m] the candidates after ReLU, before the activation's selection (JumpReLU's L0
    penalty counts from these)."""
    skip_out: torch.Tensor | None = None
    """[B, d_out] a skip-transcoder's linear path (in `reconstruction` already); else None."""


def default_k_aux(n_inputs: int, n_latents: int) -> int:
    """The paper's k_aux: a power of two close to d_in / 2 (512 for d_in = 768)."""
    return min(n_latents, 2 ** round(math.log2(max(n_inputs / 2, 1))))


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder with `n_latents` latents over `n_inputs`-dimensional activations and
    one of the registry's activations (`activation`, TopK by default)."""

    def __init__(
        self,
        n_latents: int,
        n_inputs: int,
        k: int | None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        k_aux: int | None = None,
        seed: int | None = None,
        encoder_init_scale: float = DEFAULT_ENCODER_INIT_SCALE,
        activation: str = DEFAULT_ACTIVATION,
        activation_options: dict[str, Any] | None = None,
        n_outputs: int | None = None,
        skip: bool = False,
        transcoder: bool = False,
    ) -> None:
        super().__init__()
        cls = activation_class(activation)
        if not cls.uses_k:
            k = None  # L0 comes out of training (ReLU, JumpReLU)
        elif k is None or (problem := k_problem(k, n_latents)):
            raise ValueError(problem if k is not None else "k is needed for this activation")
        if n_inputs <= 0:
            raise ValueError(f"n_inputs must be positive, got {n_inputs}")
        if n_outputs is not None and n_outputs <= 0:
            raise ValueError(f"n_outputs must be positive, got {n_outputs}")
        if not encoder_init_scale > 0:
            raise ValueError(f"encoder_init_scale must be positive, got {encoder_init_scale}")
        self.activation = activation
        self.activation_fn = cls(**(activation_options or {}))  # chooses the active latents
        self.n_latents = int(n_latents)
        self.n_inputs = int(n_inputs)
        self.n_outputs = int(n_outputs) if n_outputs is not None else self.n_inputs
        """Width of what it reconstructs: the input's (an SAE) or a target's (a transcoder)."""
        self.skip = bool(skip)  # a skip-transcoder: a learned linear map from input to output
        self.transcoder = bool(transcoder or skip or self.n_outputs != self.n_inputs)
        """Reconstructs another activation than it reads (b_dec is not subtracted from x)."""
        self.k = int(k) if k is not None else None
        """Active latents per token (BatchTopK: on average); None where training sets L0."""
        self.k_aux = int(k_aux) if k_aux is not None else default_k_aux(n_inputs, n_latents)
        dtype = dtype or torch.float32
        # a stream of its own: synthetic data made with the same seed draws other numbers
        gen = (torch.Generator().manual_seed(stream_seed(seed, "sae.init"))
               if seed is not None else None)
        w_enc = F.normalize(torch.randn(n_latents, n_inputs, generator=gen,
                                        dtype=torch.float32), dim=1)
        # an SAE's decoder starts as its encoder's transpose; a transcoder's at zero, its rows
        # free in norm (as sparsify's; what each bought: docs/experiments.md)
        w_dec = torch.zeros(n_latents, self.n_outputs) if self.transcoder else w_enc
        factory = {"device": device, "dtype": dtype}
        self.W_dec = nn.Parameter(w_dec.to(**factory))
        # the encoder as rows [d_sae, d_in] (like nn.Linear.weight): the sparse backward reads
        # and writes whole latent rows; `W_enc` gives SAELens' [d_in, d_sae] view of it
        self.enc_weight = nn.Parameter((w_enc * encoder_init_scale).to(**factory))
        self.b_enc = nn.Parameter(torch.zeros(n_latents, **factory))
        self.b_dec = nn.Parameter(torch.zeros(self.n_outputs, **factory))
        self.W_skip = (nn.Parameter(torch.zeros(self.n_outputs, self.n_inputs, **factory))
                       if self.skip else None)
        self.activation_fn.attach(self)
        self.sparse_backward = True
        """Gradients through the chosen latents only (harness.core.sparse_ops); False = autograd
        through the dense pre-activations (the reference)."""

    @property
    def kind(self) -> str:
        """"sae", "transcoder" or "skip_transcoder" (the trial record and the report say it)."""
        return "skip_transcoder" if self.skip else "transcoder" if self.transcoder else "sae"

    @property
    def W_enc(self) -> torch.Tensor:  # noqa: N802 - SAELens' name
        """The encoder as SAELens lays it out, [d_in, d_sae] (a view of `enc_weight`)."""
        return self.enc_weight.T

    # ------------------------------------------------------------------------- model
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self._dense_pre(self.encoder_input(x))

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder reads: x - b_dec for an SAE, x itself for a transcoder."""
        return x if self.transcoder else x - self.b_dec

    def split_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target) of a training batch: an SAE's target is its input; a transcoder's
        batch holds both side by side ([B, d_in + d_out], harness.core.store.pairs)."""
        if not self.transcoder:
            return batch, batch
        if batch.shape[1] != self.n_inputs + self.n_outputs:
            raise ValueError(f"a transcoder with d_in {self.n_inputs} and d_out "
                             f"{self.n_outputs} needs [B, {self.n_inputs + self.n_outputs}] "
                             f"batches of (input, target), got {list(batch.shape)}")
        return batch[:, :self.n_inputs], batch[:, self.n_inputs:]

    def skip_path(self, x: torch.Tensor) -> torch.Tensor | None:
        """A skip-transcoder's x @ W_skip.T, else None."""
        if self.W_skip is None:
            return None
        return x.to(self.W_skip.dtype) @ self.W_skip.T

    def _dense_pre(self, centered: torch.Tensor) -> torch.Tensor:
        """b_enc + centered @ W_enc: the one dense product of a step."""
        return torch.addmm(self.b_enc, centered, self.enc_weight.T)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Active latents of `x` at inference: (values after ReLU, indices), both [B, k] (BatchTopK:
        [B, 4k], zero where a candidate is below the threshold)."""
        with torch.no_grad():
            out = self(x)
        return out.top_values, out.top_indices

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Sum of the chosen decoder rows weighted by their activations, plus `b_dec`."""
        weights = values.to(self.W_dec.dtype)  # bf16 under autocast, the decoder stays fp32
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=weights,
                               mode="sum") + self.b_dec

    def forward(self, x: torch.Tensor) -> SaeOutput:
        out = self._forward(x)
        skip = self.skip_path(x)
        if skip is None:
            return out
        return out._replace(reconstruction=out.reconstruction + skip, skip_out=skip)

    def _forward(self, x: torch.Tensor) -> SaeOutput:
        centered = self.encoder_input(x)
        fn = self.activation_fn
        sparse = self.sparse_backward and torch.is_grad_enabled()
        # an activation that may go dense (ReLU, JumpReLU) keeps the graph of the dense product
        # until it knows this batch's width; an unused graph costs nothing but memory
        with torch.no_grad() if sparse and fn.uses_k else contextlib.nullcontext():
            pre = self._dense_pre(centered)
        width = fn.width(self, pre.detach())
        if width is None:  # every latent: dense products both ways
            indices = torch.arange(self.n_latents, device=x.device).expand(x.shape[0], -1)
            candidates = F.relu(pre)
            values = fn.select(self, candidates, indices)
            reconstruction = torch.addmm(self.b_dec, values.to(self.W_dec.dtype), self.W_dec)
            return SaeOutput(reconstruction, values, indices, pre.detach() if sparse else pre,
                             centered, candidates)
        ranking = fn.ranking(self, pre.detach())
        if ranking is None:
            top, indices = (pre.detach() if sparse else pre).topk(width, dim=-1, sorted=False)
        else:  # the top by the activation's own ranking, then their pre-activations
            indices = ranking.topk(width, dim=-1, sorted=False).indices
            top = (pre.detach() if sparse else pre).gather(1, indices)
        if sparse:
            top = gather_preacts(top, indices, centered, self.enc_weight, self.b_enc)
            pre = pre.detach()
        candidates = F.relu(top)
        values = fn.select(self, candidates, indices)
        return SaeOutput(self.decode(values, indices), values, indices, pre, centered,
                         candidates)

    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Latents as a dense [B, d_sae] tensor (for analysis; training never builds this)."""
        values, indices = self.encode(x)
        return torch.zeros(x.shape[0], self.n_latents, device=x.device,
                           dtype=values.dtype).scatter_(1, indices, values)

    # ------------------------------------------------------------------------- losses
    def l1_penalty(self, out: SaeOutput) -> torch.Tensor:
        """Mean over tokens of sum_i |z_i| * ||W_dec_i|| (decoder-norm weighted L1)."""
        norms = self.W_dec.norm(dim=1)[out.top_indices]  # gather n norms, not B*k rows
        return (out.top_values.abs() * norms).sum(-1).mean()

    def auxk_loss(self, x: torch.Tensor, out: SaeOutput,
                  dead: torch.Tensor | DeadLatents) -> torch.Tensor:
        """MSE of the residual x - x_hat reconstructed by the top-k_aux dead latents (`x` is
        what it reconstructs: a transcoder's target).

        `dead` is a [n] bool mask, or the DeadLatents the trainer read (then nothing here waits
        for the device). Zero (with a graph) when no latent is dead, so the caller can always
        add it.
        """
        if not isinstance(dead, DeadLatents):
            dead = DeadLatents.of(dead)
        if dead.count == 0:
            return out.reconstruction.new_zeros(())
        k_aux = min(self.k_aux, dead.count)
        if out.pre_acts.requires_grad:  # dense reference path
            masked = out.pre_acts.masked_fill(~dead.mask, float("-inf"))
            values, indices = masked.topk(k_aux, dim=-1, sorted=False)
        else:  # top-k over the dead columns only, sparse backward
            top, local = out.pre_acts[:, dead.indices].topk(k_aux, dim=-1, sorted=False)
            indices = dead.indices[local]
            values = gather_preacts(top, indices, out.centered, self.enc_weight, self.b_enc)
        values = F.relu(values)
        residual = (x - out.reconstruction).detach()
        residual_hat = F.embedding_bag(indices, self.W_dec,
                                       per_sample_weights=values.to(self.W_dec.dtype),
                                       mode="sum")
        return (residual_hat - residual).pow(2).mean()

    # ------------------------------------------------------------------------- constraints
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (an SAE's; a transcoder's rows stay free)."""
        if self.transcoder:
            return
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grads_(self) -> None:
        """Drop each decoder row's gradient along the row (an SAE's; a transcoder's are free)."""
        if self.W_dec.grad is None or self.transcoder:
            return
        w, g = self.W_dec, self.W_dec.grad
        g.sub_((g * w).sum(dim=1, keepdim=True) * w)

    # ------------------------------------------------------------------------- save / load
    def config_dict(self) -> dict[str, Any]:
        """cfg.json in SAELens 6.x's inference form (what `SAE.load_from_disk` reads, with no
        legacy path: `metadata.sae_lens_version`), plus our own fields: `saesweep_activation`
        names the activation it trained with (BatchTopK and Matryoshka are saved as SAELens'
        JumpReLU, one threshold for every latent)."""
        fn = self.activation_fn
        architecture = fn.saelens_name or self.activation
        if self.transcoder:
            architecture = transcoder_architecture(architecture, self.skip)
        return {
            "architecture": architecture,
            "d_in": self.n_inputs,
            "d_sae": self.n_latents,
            **({"d_out": self.n_outputs, "saesweep_skip": self.skip} if self.transcoder else {}),
            **({"k": self.k} if self.k is not None else {}),
            "dtype": str(self.W_dec.dtype).removeprefix("torch."),
            "device": str(self.W_dec.device),
            "apply_b_dec_to_input": not self.transcoder,
            "normalize_activations": "none",
            "reshape_activations": "none",
            **({"rescale_acts_by_decoder_norm": False} if architecture == "topk" else {}),
            "saesweep_activation": self.activation,
            "k_aux": self.k_aux,
            **fn.config(self),
            # False after a decoder refit (harness.core.training.refit): rows at the data's scale
            "decoder_rows_unit_norm": bool(torch.allclose(
                self.W_dec.detach().norm(dim=1), self.W_dec.new_ones(()), atol=1e-4)),
            "metadata": {"sae_lens_version": SAELENS_FORMAT},
        }

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write `sae_weights.safetensors` and `cfg.json` into folder `path` (atomically);
        `metadata` joins cfg.json's (SAELens reads `hook_name` and `model_name` there)."""
        path = Path(path)
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec,
                   "b_dec": self.b_dec}
        if self.W_skip is not None:
            tensors["W_skip"] = self.W_skip
        tensors.update(self.activation_fn.tensors(self))
        write_safetensors(path / WEIGHTS_FILE, tensors)
        cfg = self.config_dict()
        cfg["metadata"].update(metadata or {})
        write_json(path / CONFIG_FILE, cfg)
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
        """The SAE saved in folder `path`: ours, SAELens' (inference or training), sparsify's
        or dictionary_learning's (harness.core.sae_formats), read exactly or refused with the
        file and field at fault. Never runs code."""
        from harness.core.sae_formats import read_sae

        return read_sae(path, device=device)

    @classmethod
    def from_weights(cls, activation: str, weights: dict[str, torch.Tensor],
                     k: int | None = None, options: dict[str, Any] | None = None,
                     k_aux: int | None = None, where: str = "",
                     device: torch.device | str = "cpu",
                     transcoder: bool = False) -> SparseAutoencoder:
        """An SAE of `activation` with these weights (SAELens' names and layouts: W_enc
        [d_in, d_sae], b_enc, W_dec [d_sae, d_out], b_dec [d_out], a skip-transcoder's W_skip
        [d_out, d_in], and the activation's own tensors); CorruptFile (naming `where`) when a
        tensor is missing or of the wrong shape. `transcoder`: b_dec is not subtracted from the
        input (implied by d_out != d_in or W_skip)."""
        missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - weights.keys()
        if missing:
            raise CorruptFile(f"{where}: missing tensors {sorted(missing)}")
        d_sae, d_out = weights["W_dec"].shape
        d_in = weights["W_enc"].shape[0]
        skip = "W_skip" in weights
        check_shapes(where, weights, {"W_enc": (d_in, d_sae), "b_enc": (d_sae,),
                                      "W_dec": (d_sae, d_out), "b_dec": (d_out,),
                                      **({"W_skip": (d_out, d_in)} if skip else {})})
        sae = cls(d_sae, d_in, k, device=device, dtype=weights["W_dec"].dtype, k_aux=k_aux,
                  activation=activation, activation_options=options, n_outputs=d_out,
                  skip=skip, transcoder=transcoder)
        own = sae.activation_fn.tensors(sae)
        own.pop("W_skip", None)
        missing = set(own) - weights.keys()
        if missing:
            raise CorruptFile(f"{where}: missing tensors {sorted(missing)}")
        with torch.no_grad():
            sae.enc_weight.copy_(weights["W_enc"].T)
            for key in ("b_enc", "W_dec", "b_dec", *(("W_skip",) if skip else ())):
                getattr(sae, key).copy_(weights[key])
        try:
            sae.activation_fn.restore(sae, {key: weights[key].to(sae.W_dec) for key in own})
        except (RuntimeError, ValueError) as e:
            raise CorruptFile(f"{where}: {e}") from e
        return sae


def transcoder_architecture(saelens_name: str, skip: bool) -> str:
    """SAELens 6.x's architecture name for a transcoder of this activation (it registers
    `transcoder`, `skip_transcoder`, `jumprelu_transcoder` and `jumprelu_skip_transcoder`);
    TopK has none there and keeps our own name, `topk_transcoder` / `topk_skip_transcoder`."""
    base = {"standard": ""}.get(saelens_name, saelens_name + "_")
    return f"{base}{'skip_' if skip else ''}transcoder"


__all__ = ["SaeOutput", "SparseAutoencoder", "TopKSae", "data_center", "default_k_aux",
           "geometric_median", "transcoder_architecture"]

TopKSae = SparseAutoencoder
"""The seed API's name for it (it trains every activation in the registry, TopK first)."""
