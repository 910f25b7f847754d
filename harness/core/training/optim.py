"""Adam with a faster decoder, and the learning-rate schedule."""

from __future__ import annotations

import torch

from harness.core.sae import SparseAutoencoder
from harness.core.training.config import SaeTrainingConfig


def lr_factor(step: int, warmup_steps: int, total_steps: int, decay_fraction: float) -> float:
    """Learning-rate multiplier of 0-based `step`: linear warm-up from 0, constant, then a
    linear decay that would reach 0 one step after the last."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    decay_steps = round(decay_fraction * total_steps)
    if decay_steps > 0:
        factor = min(factor, (total_steps - step) / decay_steps)
    return max(factor, 0.0)


def adam(sae: SparseAutoencoder, cfg: SaeTrainingConfig) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where this torch build supports it for these parameters; the
    decoder rows in their own group at `decoder_lr_scale` times the rate (group 0 is at `lr`), and
    an activation's own parameters at the multiples it asks for (JumpReLU's thresholds)."""
    own = {id(p): scale for p, scale in sae.activation_fn.lr_scales(sae)}
    rest = [p for p in sae.parameters() if p is not sae.W_dec and id(p) not in own]
    params = [{"params": rest}, {"params": [sae.W_dec], "lr": cfg.lr * cfg.decoder_lr_scale}]
    params += [{"params": [p], "lr": cfg.lr * own[id(p)]} for p in sae.parameters()
               if id(p) in own]
    try:
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)


def schedule(opt: torch.optim.Optimizer, cfg: SaeTrainingConfig,
             total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up, constant, then the optional linear decay (lr_factor) over `total_steps`."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.lr_warmup_steps, total_steps, cfg.lr_decay_fraction))
