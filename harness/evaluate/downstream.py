"""Downstream fidelity: splice an SAE into its language model and measure what the LM loses.

At every kept position of the evaluation windows (harness.evaluate.windows) the hooked module's
output is replaced by the SAE's reconstruction of it, and the model's next-token predictions
are compared with the clean model's and with those of the model whose activation there is
zero (docs/metrics.md, "Downstream"):

    ce_orig, ce_sae, ce_zero   mean next-token cross-entropy (nats) over the kept positions
    delta_ce      = ce_sae - ce_orig
    ce_loss_score = (ce_zero - ce_sae) / (ce_zero - ce_orig)
    kl            = mean over kept positions of KL(p_orig || p_sae), summed over the vocabulary
    kl_score      = (kl_zero - kl) / kl_zero
    fvu, l0       the reconstruction metrics (harness.core.metrics) on exactly those positions

A transcoder is spliced the same way: the module's output is replaced by the transcoder's output
of the module's input, and fvu is of the module's output; zero ablation zeroes the module's output
as for an SAE.

Per-token quantities are averaged over every kept token first; the ratios are taken after.
The clean and zero-ablated passes are the same for every SAE: `Reference` computes them once
(keeping, per kept position, the input of the output embedding, so p_orig is recomputed exactly
by one matrix product instead of stored at vocabulary size) and can be saved and reloaded, so
each SAE costs one spliced forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from harness.core.atomic import write_safetensors
from harness.core.metrics import ReconstructionAccumulator
from harness.core.sae import SparseAutoencoder
from harness.core.store import StoreError
from harness.data.models import LoadedModel, find_module, load_model
from harness.evaluate.config import DownstreamConfig
from harness.evaluate.windows import Windows, make_windows

HEAD_RTOL = 1e-3  # the output embedding of the kept inputs must give the model's own logits

log = logging.getLogger("saesweep.downstream")


def reference_path(cache_dir: str | Path, key: str) -> Path:
    """Where a reference with `key` is kept in `cache_dir`."""
    return Path(cache_dir) / f"reference-{key}.safetensors"


class Reconstructor(Protocol):
    """What is spliced in: activations [n, d] (a transcoder's: the module's inputs) -> (the
    module's output reconstructed [n, d_out], active latents summed over the n tokens)."""

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]: ...


def sae_reconstructor(sae: SparseAutoencoder) -> Reconstructor:
    """An SAE of ours (TopK or BatchTopK, at inference) as a Reconstructor."""

    @torch.no_grad()
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = sae(x.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype))
        return out.reconstruction.to(x), (out.top_values > 0).sum()

    return run


@dataclass(frozen=True)
class DownstreamMetrics:
    """One SAE spliced into its model, over one evaluation set."""

    ce_orig: float
    """Clean next-token cross-entropy (nats)."""
    ce_sae: float
    """Cross-entropy with the SAE's reconstruction spliced in."""
    ce_zero: float
    """Cross-entropy with the activation zero-ablated."""
    delta_ce: float
    """ce_sae - ce_orig."""
    ce_loss_score: float
    """(ce_zero - ce_sae) / (ce_zero - ce_orig)."""
    kl: float
    """Mean KL(p_orig || p_sae)."""
    kl_score: float
    """(kl_zero - kl) / kl_zero."""
    fvu: float
    """Reconstruction FVU on the kept positions."""
    l0: float
    """Active latents per kept position."""
    tokens: int
    """Kept positions evaluated."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Reference:
    """The clean and zero-ablated passes of one evaluation set, per kept position."""

    windows: Windows
    head_in: torch.Tensor
    """[n_kept, d_model] input of the output embedding in the clean pass."""
    ce_orig: torch.Tensor
    """[n_kept] clean cross-entropy."""
    ce_zero: torch.Tensor
    """[n_kept] zero-ablated cross-entropy."""
    kl_zero: torch.Tensor
    """[n_kept] KL(p_orig || p_zero)."""
    width: int
    """Width of the hooked activation (the SAE's d_in must equal it)."""
    key: str

    def save(self, path: Path) -> Path:
        tensors = {"ids": self.windows.ids, "kept": self.windows.kept.to(torch.uint8),
                   "head_in": self.head_in, "ce_orig": self.ce_orig, "ce_zero": self.ce_zero,
                   "kl_zero": self.kl_zero}
        meta = {"key": self.key, "width": str(self.width),
                "description": self.windows.description}
        write_safetensors(path, tensors, metadata=meta)
        return path

    @classmethod
    def load(cls, path: Path, key: str) -> Reference | None:
        """The reference saved at `path` if it is the one for `key`, else None."""
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("key") != key:
                return None
            t = load_file(str(path))
            windows = Windows(ids=t["ids"], kept=t["kept"].bool(),
                              description=meta.get("description", ""))
            ref = cls(windows=windows, head_in=t["head_in"], ce_orig=t["ce_orig"],
                      ce_zero=t["ce_zero"], kl_zero=t["kl_zero"], width=int(meta["width"]),
                      key=key)
            n = int(windows.kept.sum())
            if any(x.shape[0] != n for x in (ref.head_in, ref.ce_orig, ref.ce_zero,
                                             ref.kl_zero)) or ref.head_in.shape[1] != ref.width:
                raise ValueError("its tensors disagree with its windows")
        except (OSError, SafetensorError, KeyError, ValueError, RuntimeError) as e:
            # unreadable, cut short or inconsistent: computed again (and rewritten)
            log.warning("reference cache %s is damaged (%s: %s); computing it again", path,
                        type(e).__name__, e)
            return None
        return ref


class DownstreamEvaluator:
    """A causal LM, a hook point and the reference passes: evaluates any number of SAEs."""

    def __init__(self, lm: LoadedModel, cfg: DownstreamConfig,
                 cache_dir: str | Path | None = None, write_cache: bool = True) -> None:
        if not lm.causal or lm.bos_id is None:
            raise StoreError(f"model {cfg.model!r}: the downstream evaluation needs a causal "
                             "LM with a BOS (or EOS) token")
        self.lm, self.cfg = lm, cfg
        self.module = find_module(lm.model, cfg.layer, cfg.model)
        self.head = lm.model.get_output_embeddings()
        if self.head is None:
            raise StoreError(f"model {cfg.model!r} has no output embedding (LM head)")
        self.device = next(lm.model.parameters()).device
        context = context_length(lm.model)
        if context is not None and cfg.seq_len + 1 > context:
            raise ValueError(f"seq_len {cfg.seq_len}: a window is a BOS and {cfg.seq_len} "
                             f"tokens, past the {context} positions of {cfg.model!r}'s context; "
                             f"use seq_len <= {context - 1}")
        key = cfg.key(lm.path)
        self.cache_path = reference_path(cache_dir, key) if cache_dir else None
        loaded = Reference.load(self.cache_path, key) if self.cache_path else None
        self.reference = loaded or self._compute_reference(key)
        self.computed = loaded is None
        """The reference was computed here (not read from `cache_dir`)."""
        if self.cache_path is not None and self.computed and write_cache:
            self.reference.save(self.cache_path)

    @classmethod
    def open(cls, cfg: DownstreamConfig, cache_dir: str | Path | None = None,
             write_cache: bool = True) -> DownstreamEvaluator:
        """Load the model of `cfg` (with its head) and the reference: from `cache_dir` when it
        holds this one, else computed (and saved there unless `write_cache` is False)."""
        return cls(load_model(cfg.model, cfg.device, causal=True), cfg, cache_dir, write_cache)

    @property
    def width(self) -> int:
        return self.reference.width

    # ------------------------------------------------------------------ passes
    def _batches(self, w: Windows) -> Iterator[tuple[torch.Tensor, torch.Tensor, slice]]:
        """(ids, kept, slice of the flat kept positions) per batch of windows."""
        step, offset = self.cfg.batch_windows, 0
        for start in range(0, w.ids.shape[0], step):
            ids, kept = w.ids[start:start + step], w.kept[start:start + step]
            n = int(kept.sum())
            yield ids.to(self.device), kept.to(self.device), slice(offset, offset + n)
            offset += n

    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, kept: torch.Tensor,
                 replace: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                 seen: dict[str, Any]) -> torch.Tensor:
        """Logits at the kept positions [n, vocab]; `replace` maps the hooked module's output
        and first input at the kept positions to what is spliced in; `seen` receives the
        activation's width and the head's input at the kept positions."""

        def hook(_m: torch.nn.Module, inputs: Any, output: Any) -> Any:
            act = output[0] if isinstance(output, tuple) else output
            seen["width"] = act.shape[-1]
            if replace is None:
                return None
            new = act.clone()
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else act
            new[kept] = replace(act[kept], first[kept]).to(act.dtype)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        def head_hook(_m: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            seen["head_in"] = inputs[0][kept]

        handles = [self.module.register_forward_hook(hook),
                   self.head.register_forward_pre_hook(head_hook)]
        try:
            logits = self.lm.model(input_ids=ids).logits
        finally:
            for h in handles:
                h.remove()
        return logits[kept].float()

    def _compute_reference(self, key: str) -> Reference:
        cfg, tok = self.cfg, self.lm.tokenizer
        windows = make_windows(tok, cfg.text, cfg.seq_len, cfg.windows, self.lm.bos_id)
        parts: dict[str, list[torch.Tensor]] = {"head_in": [], "ce_orig": [], "ce_zero": [],
                                                "kl_zero": []}
        width = 0
        for ids, kept, _ in self._batches(windows):
            seen: dict[str, Any] = {}
            logits = self._forward(ids, kept, None, seen)
            width = int(seen["width"])
            again = self.head(seen["head_in"]).float()
            if not torch.allclose(again, logits, rtol=HEAD_RTOL,
                                  atol=HEAD_RTOL * float(logits.abs().max())):
                raise StoreError(f"model {cfg.model!r}: its logits are not its output "
                                 "embedding of the last hidden state (e.g. soft-capped); the "
                                 "downstream evaluation does not support it")
            targets = ids[:, 1:][kept[:, :-1]]
            logp = F.log_softmax(logits, dim=-1)
            zero = F.log_softmax(self._forward(ids, kept, lambda out, _: torch.zeros_like(out),
                                               {}), dim=-1)
            parts["head_in"].append(seen["head_in"].cpu())
            parts["ce_orig"].append(_ce(logp, targets).cpu())
            parts["ce_zero"].append(_ce(zero, targets).cpu())
            parts["kl_zero"].append(_kl(logp, zero).cpu())
        return Reference(windows=windows, width=width, key=key,
                         **{k: torch.cat(v) for k, v in parts.items()})

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, reconstruct: Reconstructor | SparseAutoencoder,
                 reads_input: bool = False) -> DownstreamMetrics:
        """Splice `reconstruct` in at every kept position; see the module docstring.
        `reads_input`: it is a transcoder, fed the module's input (implied by an SAE of ours
        that is one)."""
        if isinstance(reconstruct, SparseAutoencoder):
            reads_input = reconstruct.transcoder
            if reconstruct.n_outputs != self.width:
                what = "d_out" if reads_input else "d_in"
                raise ValueError(f"the SAE has {what}={reconstruct.n_outputs}, but "
                                 f"{self.cfg.layer} of {self.cfg.model} has width {self.width}")
            reconstruct = sae_reconstructor(reconstruct)
        ref = self.reference
        acc = ReconstructionAccumulator()
        ce_sae, kl = [], []

        def replace(out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
            x_hat, n_active = reconstruct(inputs if reads_input else out)
            acc.update(out, x_hat, n_active)
            return x_hat

        for ids, kept, where in self._batches(ref.windows):
            logp_sae = F.log_softmax(self._forward(ids, kept, replace, {}), dim=-1)
            logp = F.log_softmax(self.head(ref.head_in[where].to(self.device)).float(), dim=-1)
            targets = ids[:, 1:][kept[:, :-1]]
            ce_sae.append(_ce(logp_sae, targets).cpu())
            kl.append(_kl(logp, logp_sae).cpu())
        rec = acc.result()
        return _metrics(ref, torch.cat(ce_sae), torch.cat(kl), rec.fvu, rec.l0)


def context_length(model: torch.nn.Module) -> int | None:
    """The most positions the model's config says it takes (None when it does not say)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _ce(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -logp.gather(1, targets[:, None]).squeeze(1)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, summed over the vocabulary."""
    return F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)


def _metrics(ref: Reference, ce_sae: torch.Tensor, kl: torch.Tensor, fvu: float,
             l0: float) -> DownstreamMetrics:
    mean = lambda t: float(t.double().mean())  # noqa: E731
    ce_orig, ce_zero, kl_zero = mean(ref.ce_orig), mean(ref.ce_zero), mean(ref.kl_zero)
    ce, k = mean(ce_sae), mean(kl)
    return DownstreamMetrics(
        ce_orig=ce_orig, ce_sae=ce, ce_zero=ce_zero, delta_ce=ce - ce_orig,
        ce_loss_score=(ce_zero - ce) / (ce_zero - ce_orig) if ce_zero != ce_orig else float("nan"),
        kl=k, kl_score=(kl_zero - k) / kl_zero if kl_zero > 0 else float("nan"),
        fvu=fvu, l0=l0, tokens=int(ce_sae.numel()))
