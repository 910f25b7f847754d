"""Sparse autograd for the TopK encoder: the one dense product is the forward `x @ W_enc`.

Autograd through `topk` scatters the gradient of the k chosen pre-activations into a dense
[B, n] matrix and then runs two more dense products of B*n*d work (for W_enc and for the input).
Only B*k of those entries are non-zero, so `gather_preacts` returns the chosen pre-activations
with a backward that touches only them:

- dL/dW_enc[:, j]  = sum over (token b, slot s) choosing latent j of  g[b, s] * x[b]
  (a sparse [n x B] by dense [B x d] product: B*k*d work);
- dL/db_enc[j]     = sum of g over the slots choosing j (an index_add over B*k values);
- dL/dx[b]         = sum_s g[b, s] * W_enc[:, idx[b, s]]  (an embedding_bag over encoder rows).

The dense path (autograd through topk) stays in TopKSae as the reference (sparse_backward=False).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _GatherPreacts(torch.autograd.Function):
    """Forward: the already computed pre-activations at `indices`. Backward: sparse."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor,  # noqa: ANN001
                w_enc_t: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(indices, x, w_enc_t)
        ctx.n_latents = b_enc.shape[0]
        return values

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        indices, x, w_enc_t = ctx.saved_tensors
        n = ctx.n_latents
        grad = grad.contiguous()
        flat_idx = indices.reshape(-1)
        flat_grad = grad.reshape(-1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_x = F.embedding_bag(indices, w_enc_t, per_sample_weights=grad.to(w_enc_t.dtype),
                                     mode="sum").to(x.dtype)
        if ctx.needs_input_grad[3]:
            grad_w = _sparse_t_matmul(flat_idx, flat_grad, indices.shape, x, n).to(w_enc_t.dtype)
        if ctx.needs_input_grad[4]:
            grad_b = torch.zeros(n, dtype=w_enc_t.dtype, device=grad.device)
            grad_b.index_add_(0, flat_idx, flat_grad.to(w_enc_t.dtype))
        return None, None, grad_x, grad_w, grad_b


def _sparse_t_matmul(flat_idx: torch.Tensor, flat_grad: torch.Tensor, shape: torch.Size,
                     x: torch.Tensor, n: int) -> torch.Tensor:
    """G^T @ x for G [B, n] with entries flat_grad at (row b, column flat_idx): [n, d]."""
    b, k = shape
    rows = torch.arange(b, device=x.device).repeat_interleave(k)
    # indices come from topk, in range by construction: skip the invariant checks
    g_t = torch.sparse_coo_tensor(torch.stack([flat_idx, rows]), flat_grad.to(x.dtype), (n, b),
                                  check_invariants=False)
    return torch.sparse.mm(g_t, x)


def gather_preacts(values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor,
                   w_enc_t: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """The pre-activations `values` = (x @ w_enc_t.T + b_enc)[b, indices[b, s]], computed
    without a graph (e.g. by topk under no_grad), given a sparse backward into x, the encoder
    rows w_enc_t [n, d] and b_enc."""
    return _GatherPreacts.apply(values, indices, x, w_enc_t, b_enc)

