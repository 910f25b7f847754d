"""Where an SAE's biases start: the centre of a sample of the data."""

from __future__ import annotations

import torch


@torch.no_grad()
def data_center(sample: torch.Tensor, method: str = "geometric_median") -> torch.Tensor:
    """The centre b_dec starts from: "geometric_median" (the paper), "mean" or "zeros"."""
    sample = sample.to(torch.float32)
    if method == "geometric_median":
        return geometric_median(sample)
    if method == "mean":
        return sample.mean(0)
    if method == "zeros":
        return torch.zeros(sample.shape[1], device=sample.device)
    raise ValueError(f"b_dec init must be geometric_median, mean or zeros, got {method!r}")


@torch.no_grad()
def geometric_median(points: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    median = points.mean(0)
    for _ in range(iters):
        dist = (points - median).norm(dim=1).clamp_min(eps)
        weights = 1.0 / dist
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - median).norm() <= eps * max(1.0, float(median.norm())):
            return new
        median = new
    return median
