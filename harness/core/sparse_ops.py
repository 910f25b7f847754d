"""Sparse autograd for the TopK encoder: the one dense product is the forward `x @ W_enc`.

Autograd through `topk` scatters the gradient of the k chosen pre-activations into a dense
[B, n] matrix and then runs two more dense products of B*n*d work (for W_enc and for the input).
Only B*k of those entries are non-zero, so `gather_preacts` returns the chosen pre-activations
with a backward that touches only them:

- dL/dW_enc[:, j]  = sum over (token b, slot s) choosing latent j of  g[b, s] * x[b]
  (a sparse [n x B] by dense [B x d] product: B*k*d work, `codes_t_matmul`);
- dL/db_enc[j]     = sum of g over the slots choosing j (an index_add over B*k values);
- dL/dx[b]         = sum_s g[b, s] * W_enc[:, idx[b, s]]  (an embedding_bag over encoder rows).

The dense path (autograd through topk) stays in SparseAutoencoder as the reference
(sparse_backward=False).
"""

from __future__ import annotations

import warnings

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
            grad_w = codes_t_matmul(indices, grad, x, n).to(w_enc_t.dtype)
        if ctx.needs_input_grad[4]:
            grad_b = torch.zeros(n, dtype=w_enc_t.dtype, device=grad.device)
            grad_b.index_add_(0, flat_idx, flat_grad.to(w_enc_t.dtype))
        return None, None, grad_x, grad_w, grad_b


def codes_t_matmul(indices: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
                   n: int) -> torch.Tensor:
    """Z^T @ x [n, d] for the sparse codes Z [B, n] that hold `values` [B, m] at columns
    `indices` [B, m] (distinct within a row), and x [B, d].

    Z^T is built in CSR form, rows = latents: a stable sort of the indices gives the column
    (token) order within each latent, and a search of the sorted indices gives the row offsets.
    Unlike a COO product, nothing needs coalescing, whose data-dependent size makes the host
    wait for a GPU (its speed against the COO product: docs/experiments.md).
    """
    b, m = indices.shape
    latents, order = torch.sort(indices.reshape(-1), stable=True)
    tokens = torch.div(order, m, rounding_mode="floor")
    offsets = torch.searchsorted(latents, torch.arange(n + 1, device=x.device,
                                                       dtype=latents.dtype))
    with warnings.catch_warnings():  # "CSR is in beta": construction and CSR @ dense are not
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # built from a sort, so valid by construction: skip the invariant checks
        z_t = torch.sparse_csr_tensor(offsets, tokens, values.reshape(-1)[order].to(x.dtype),
                                      (n, b), check_invariants=False)
    return z_t @ x


def gather_preacts(values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor,
                   w_enc_t: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """The pre-activations `values` = (x @ w_enc_t.T + b_enc)[b, indices[b, s]], computed
    without a graph (e.g. by topk under no_grad), given a sparse backward into x, the encoder
    rows w_enc_t [n, d] and b_enc."""
    return _GatherPreacts.apply(values, indices, x, w_enc_t, b_enc)
