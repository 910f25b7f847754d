"""EleutherAI sparsify's training step as its Trainer runs it, for the benchmarks that put it
beside ours (scripts/bench_quality.py, scripts/bench_trainer.py): decoder rows renormalised,
SparseCoder forward (FVU + AuxK over latents silent for 10M tokens, weight 1/32; the forward
carries its own bf16 autocast on CUDA), backward, the gradient parallel to the decoder rows
removed, Adam."""

from __future__ import annotations

from collections.abc import Callable

import torch

DEAD_AFTER_TOKENS = 10_000_000
"""sparsify's dead_feature_threshold."""


def sparsify_trainer(sae, lr: float) -> Callable[..., None]:  # noqa: ANN001
    """A step function training the SparseCoder `sae` with Adam at a constant `lr`; `b_dec`
    starts at the first batch's mean, as sparsify's Trainer sets it. A transcoder
    (`sae.cfg.transcode`) steps on (x, y) as its Trainer does: the encoder bias starts at minus
    the encoder's image of the inputs' mean, b_dec at the targets' mean, and its decoder is
    neither renormalised nor rid of the parallel gradient."""
    transcode = bool(sae.cfg.transcode)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=sae.b_dec.device)
    started = False

    def step(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        nonlocal started
        if not started:
            with torch.no_grad():
                if transcode:
                    sae.encoder.bias.data = -x.mean(0) @ sae.encoder.weight.data.T
                sae.b_dec.data = (y if transcode else x).mean(0)
            started = True
        if not transcode:
            sae.set_decoder_norm_to_unit_norm()
        out = sae(x, y, dead_mask=since_fired > DEAD_AFTER_TOKENS)
        (out.fvu + out.auxk_loss / 32).backward()
        if not transcode:
            sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        since_fired.add_(x.shape[0])
        since_fired[out.latent_indices.flatten()] = 0

    return step
