"""How scripts/bench_quality.py scores a trained SAE (or transcoder): one Score per run, its
held-out FVU computed here for every trainer alike, and its downstream metrics when asked."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Score:
    """One trained SAE, scored on the held-out tokens."""

    trainer: str
    """"sparsify" or the recipe name of ours."""
    column: str
    """The grid column: the learning rate asked for, or "default"."""
    lr: float
    """Learning rate it trained with."""
    fvu: float
    """Held-out fraction of variance unexplained."""
    l0: float
    """Held-out mean active latents per token."""
    seconds: float
    """Wall time of the training."""
    cpu_seconds: float = 0.0
    """Process CPU time of the training (every thread)."""
    tokens: int = 0
    """Training tokens it saw."""
    matched: str = ""
    """With --equal-time, sparsify's runs: "wall" or "cpu", the budget it was given."""
    finish_s: float = 0.0
    """Ours: wall time of the least-squares finish."""
    finish_share: float = 0.0
    """Ours: the finish's time over the training loop's."""
    delta_ce: float | None = None
    """LM cross-entropy added by splicing the SAE in (with --model)."""
    ce_loss_score: float | None = None
    """(CE_zero - CE_sae) / (CE_zero - CE_orig) (with --model)."""
    kl: float | None = None
    """Mean KL(p_orig || p_sae) per token (with --model)."""
    activation: str = "topk"
    """Ours: the SAE's activation."""


def with_downstream(score: Score, reconstruct, evaluator,  # noqa: ANN001
                    reads_input: bool = False) -> Score:
    """The score with the SAE's downstream metrics, when an evaluator is given (`reads_input`:
    a transcoder, fed the hooked module's input)."""
    if evaluator is None:
        return score
    m = evaluator.evaluate(reconstruct, reads_input=reads_input)
    return replace(score, delta_ce=m.delta_ce, ce_loss_score=m.ce_loss_score, kl=m.kl)


@torch.no_grad()
def heldout_fvu(reconstruct, x: torch.Tensor, chunk: int = 4096,
                d_in: int | None = None) -> tuple[float, float]:
    """(FVU, L0) of `reconstruct` (a harness.evaluate Reconstructor: x -> (x_hat, active latents
    summed over the batch)) over all of x; with `d_in`, x's rows are [input | target] and the FVU
    is of the target."""
    target = x if d_in is None else x[:, d_in:]
    x64 = target.double()
    total = (x64 - x64.mean(0)).pow(2).sum()
    sse = torch.zeros((), dtype=torch.float64)
    active = 0.0
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk]
        x_hat, n_active = reconstruct(xb if d_in is None else xb[:, :d_in])
        sse += (target[start:start + chunk].double() - x_hat.double()).pow(2).sum()
        active += float(n_active.sum())
    return float(sse / total), active / x.shape[0]
