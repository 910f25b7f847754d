"""Least-squares encoder refit: a Gauss-Newton step for the encoder once the decoder is refit.

After the decoder refit (harness.core.training.refit) the codes the linear encoder gives are still
not the codes that decoder wants: per token, the least-squares codes on the encoder's own support,

    c_t = argmin_c || x_t - b_dec - sum_{i in S_t} c_i W_dec,i ||^2   (a k x k system per token),

would score a tenth lower held-out FVU (MiniLM, 1M tokens: docs/experiments.md).
This module moves each encoder row (with its bias) towards the affine map that produces those
codes on the tokens where the latent fires: per latent i, the ridge regression

    min_w  sum_{t in S_i} (w . [x_t - b_dec, 1] - c_ti)^2 + ridge * mean(diag G_i) * ||w - w_i||^2

(G_i the latent's Gram matrix of its tokens), proximal to the current row so that the step stays
where the supports were measured. All n systems are solved at once by a few iterations of
Jacobi-preconditioned conjugate gradients whose matrix-vector products are passes over the tokens
(B k d work each: gathered rows, a sparse transposed product; only the first pass makes the dense
[B, n] product, to find the supports), so it needs O(n d) memory and never an n-by-d-by-d Gram
tensor. Each token's support is found once, in the first pass, and kept (k int32 a token).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from harness.core.sparse_ops import codes_t_matmul

ITERATIONS = 4
"""Conjugate-gradient steps of the solve; each is one pass over the tokens (how many were
measured, and what each bought: docs/experiments.md)."""
RIDGE = 0.1
"""Proximal weight relative to each latent's mean squared input on its support."""

Batches = Callable[[], Iterable[torch.Tensor]]
"""A fresh pass over the same tokens, in the same order, each call."""


class EncoderRefit:
    """The per-latent ridge systems of one SAE's encoder, solved by batched conjugate gradients
    over passes of the same batches: `add_targets` on every batch, then per iteration
    `add_product` on every batch and `end_iteration`, then `apply_`."""

    def __init__(self, sae: torch.nn.Module, ridge: float = RIDGE) -> None:
        self.sae, self.ridge = sae, ridge
        n, d = sae.n_latents, sae.n_inputs
        self.grad = torch.zeros(n, d + 1, device=sae.W_dec.device)
        self.diag = torch.zeros_like(self.grad)
        self.supports: list[torch.Tensor] = []  # each batch's top-k indices (int32)
        self.tokens = 0

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input with a ones column (for b_enc): [B, d+1]."""
        centered = (x - self.sae.b_dec).float()
        return torch.cat([centered, centered.new_ones(centered.shape[0], 1)], 1)

    @torch.no_grad()
    def add_targets(self, x: torch.Tensor) -> None:
        """Pass 0: the regression's gradient at the current rows and its diagonal; the support
        of each token is kept for the passes that follow."""
        sae = self.sae
        xt = self._inputs(x)
        pre = sae.pre_activations(x).float()  # the SAE's own encoder, not a copy of it
        top, idx = pre.topk(sae.k, dim=-1, sorted=False)
        codes = least_squares_codes(sae.W_dec, xt[:, :-1], idx)
        n = sae.n_latents
        self.grad += codes_t_matmul(idx, top - codes, xt, n)
        self.diag += codes_t_matmul(idx, torch.ones_like(top), xt * xt, n)
        self.supports.append(idx.to(torch.int32))
        self.tokens += x.shape[0]

    @torch.no_grad()
    def begin_solve(self) -> None:
        """Start conjugate gradients from a zero step (Jacobi-preconditioned)."""
        self.damping = self.ridge * self.diag.mean(1, keepdim=True) + 1e-8
        self.precondition = 1 / (self.diag + self.damping)
        self.step = torch.zeros_like(self.grad)
        self.residual = self.grad
        self.direction = self.precondition * self.residual
        self.rz = (self.residual * self.direction).sum(1, keepdim=True)
        self._begin_product()

    def _begin_product(self) -> None:
        self.product = self.damping * self.direction
        self._batch = 0

    @torch.no_grad()
    def add_product(self, x: torch.Tensor) -> None:
        """One batch's share of (each latent's Gram matrix) x (its search direction)."""
        xt = self._inputs(x)
        idx = self.supports[self._batch].long()
        self._batch += 1
        along = torch.einsum("bd,bkd->bk", xt, self.direction[idx])
        self.product += codes_t_matmul(idx, along, xt, self.sae.n_latents)

    @torch.no_grad()
    def end_iteration(self) -> None:
        """The conjugate-gradient update once a pass of `add_product` is done."""
        if self._batch != len(self.supports):
            raise RuntimeError(f"encoder refit: a pass gave {self._batch} batches, the targets "
                               f"{len(self.supports)}")
        curvature = (self.direction * self.product).sum(1, keepdim=True).clamp_min(1e-30)
        alpha = self.rz / curvature
        self.step += alpha * self.direction
        self.residual = self.residual - alpha * self.product
        z = self.precondition * self.residual
        rz_next = (self.residual * z).sum(1, keepdim=True)
        self.direction = z + (rz_next / self.rz.clamp_min(1e-30)) * self.direction
        self.rz = rz_next
        self._begin_product()

    @torch.no_grad()
    def apply_(self) -> int:
        """Move the encoder rows and biases by the solved step; returns the tokens used."""
        if not torch.isfinite(self.step).all():
            raise FloatingPointError("encoder refit: non-finite step")
        sae = self.sae
        sae.enc_weight.sub_(self.step[:, :-1].to(sae.enc_weight))
        sae.b_enc.sub_(self.step[:, -1].to(sae.b_enc))
        return self.tokens


@torch.no_grad()
def least_squares_codes(w_dec: torch.Tensor, centered: torch.Tensor,
                        indices: torch.Tensor) -> torch.Tensor:
    """Per token, the codes on its support `indices` [B, k] that best reconstruct `centered`
    (the input minus b_dec) from the decoder rows: a k x k solve per token."""
    rows = w_dec[indices].float()  # B, k, d
    gram = rows @ rows.transpose(1, 2)
    diag = gram.diagonal(dim1=1, dim2=2)
    diag.add_(1e-4 * diag + 1e-6)  # repeated or zero rows: a tiny ridge keeps it solvable
    rhs = (rows @ centered[:, :, None])[..., 0]
    return torch.linalg.solve(gram, rhs)


def solve_encoder_refits(refits: list[EncoderRefit], batches: Batches,
                         iterations: int = ITERATIONS) -> None:
    """Drive `refits` (one per SAE, sharing the passes) through 1 + `iterations` passes over
    `batches`; nothing is applied."""
    for x in batches():
        for refit in refits:
            refit.add_targets(x)
    for refit in refits:
        refit.begin_solve()
    for _ in range(iterations):
        for x in batches():
            for refit in refits:
                refit.add_product(x)
        for refit in refits:
            refit.end_iteration()


def refit_encoder_(sae: torch.nn.Module, batches: Batches, iterations: int = ITERATIONS) -> int:
    """One Gauss-Newton step for `sae`'s encoder against its current decoder (1 + `iterations`
    passes over `batches`); returns the tokens it was fitted on."""
    refit = EncoderRefit(sae)
    solve_encoder_refits([refit], batches, iterations)
    return refit.apply_()
