"""Least-squares decoder refit: the last step of training.

After the Adam steps, the encoder is kept and the decoder (rows and output bias) is replaced by
the exact minimiser of the reconstruction error on the tokens the SAE trained on:

    W_dec, c = argmin  sum_t || x_t - sum_{i active} z_ti W_dec,i - c ||^2

with z the codes of the trained encoder, a convex problem whose normal equations need only
A = Z1^T Z1 ([n+1, n+1], Z1 the codes with a column of ones) and R = Z1^T X ([n+1, d]), both
accumulated over one forward pass of the training tokens. With few steps Adam leaves the decoder
far from that optimum (what the refit bought: docs/experiments.md). The codes are unchanged by the
refit: the new output bias c is folded in by centring the input at c and shifting b_enc by W_enc (c
- b_dec), which leaves every pre-activation as it was. Decoder rows come out at the norm the data
asks for (no longer unit).

A transcoder's refit is the same regression onto its target y instead of x (its input is not
centred by b_dec, so b_enc stays). A skip-transcoder's linear path is fitted jointly: the design
gains the input's d_in dense columns, so the system is [n+1+d_in] square, its extra blocks Z1^T X,
X^T X and X^T Y summed in the same pass.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

from harness.core.sparse_ops import codes_t_matmul

MAX_PAIRED_CODES = 65
"""Up to this many codes per token (the bias included) the Gram sums scatter each pair; beyond,
the pairs' B m^2 / 2 adds cost more than a sparse [n, B] by dense [B, n] product (measured by
scripts/bench_widths.py: docs/architectures.md)."""
RIDGE = 1e-4
"""Ridge on A, relative to its diagonal (each latent's sum of squared activations)."""


class DecoderRefit:
    """Accumulates the normal equations of one SAE's decoder over batches of its codes."""

    def __init__(self, n_latents: int, n_inputs: int, device: torch.device,
                 n_skip: int = 0) -> None:
        self.n = n_latents
        # float32 sums on the device: a pass over the training tokens adds O(T k^2) terms
        self.gram = torch.zeros((n_latents + 1) ** 2, device=device)
        self.cross = torch.zeros(n_latents + 1, n_inputs, device=device)
        self.tokens = 0
        self.n_skip = n_skip
        """A skip-transcoder's input width (its dense columns), else 0."""
        if n_skip:
            self.codes_skip = torch.zeros(n_latents + 1, n_skip, device=device)
            self.skip_gram = torch.zeros(n_skip, n_skip, device=device)
            self.skip_cross = torch.zeros(n_skip, n_inputs, device=device)

    @torch.no_grad()
    def add(self, x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
            skip_inputs: torch.Tensor | None = None) -> None:
        """Add a batch: what is reconstructed, x [B, d], and its codes (values, indices) [B, m]
        (and a skip-transcoder's inputs [B, d_in]). Zero codes add nothing: the rows are cut to
        the most non-zero codes a token has (reading that count waits for the device once a
        batch)."""
        n, batch = self.n, x.shape[0]
        widest = int((values != 0).sum(1).max()) if values.numel() else 0
        if widest < values.shape[1]:  # drop the zeros (BatchTopK's unkept candidates, padding)
            keep = values.abs().topk(widest, dim=1, sorted=False).indices
            values, indices = values.gather(1, keep), indices.gather(1, keep)
        bias = torch.full((batch, 1), n, device=x.device, dtype=indices.dtype)
        idx = torch.cat([indices, bias], 1)
        val = torch.cat([values.float(), values.new_ones(batch, 1, dtype=torch.float32)], 1)
        if self.n_skip and skip_inputs is not None:
            dense = skip_inputs.float()
            self.codes_skip += codes_t_matmul(idx, val, dense, n + 1)
            self.skip_gram += dense.T @ dense
            self.skip_cross += dense.T @ x.float()
        if idx.shape[1] > MAX_PAIRED_CODES:  # wide codes (ReLU, JumpReLU): Z^T Z as sparse @ dense
            dense = torch.zeros(batch, n + 1, device=x.device).scatter_(1, idx, val)
            self.gram.view(n + 1, n + 1).add_(codes_t_matmul(idx, val, dense, n + 1).triu())
            self.cross += codes_t_matmul(idx, val, x.float(), n + 1)
            self.tokens += batch
            return
        # a token's latents are distinct, so each unordered pair goes to the upper triangle once
        # (half the scattered adds; the solve mirrors it)
        first, second = _pairs(idx.shape[1], x.device)
        a, b = idx[:, first], idx[:, second]
        flat = (torch.minimum(a, b) * (n + 1) + torch.maximum(a, b)).flatten()
        self.gram.index_add_(0, flat, (val[:, first] * val[:, second]).flatten())
        self.cross += codes_t_matmul(idx, val, x.float(), n + 1)
        self.tokens += batch

    def observe(self, sae: torch.nn.Module, batch: torch.Tensor, bf16: bool = False) -> None:
        """Add a training batch with `sae`'s inference codes of it (BatchTopK: the learned
        threshold; a transcoder: codes of the input, regressed onto the target); `bf16`: the
        encoder's product in bf16 (as the step's under autocast; on MiniLM at 1M tokens the
        refit SAE's held-out FVU agreed with the float32 pass's to 1e-6)."""
        x, target = sae.split_batch(batch)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            values, indices = sae.encode(x)
        with torch.autocast(x.device.type, enabled=False):  # the sums in float32, always
            self.add(target, values, indices, x if self.n_skip else None)

    @torch.no_grad()
    def solve(self, prior: torch.Tensor | None = None, prior_tokens: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(decoder rows [n, d], output bias [d], which latents fired [n], a skip-transcoder's
        W_skip [d, d_in] or None); with `prior` ([n, d], the trained rows), each row is pulled
        towards its prior row with the weight of `prior_tokens` tokens. Solved in float32 on
        the Jacobi-scaled system (the ridge and the prior bound its condition number), in
        float64 where that factorisation fails."""
        n = self.n
        upper = self.gram.view(n + 1, n + 1)
        gram = upper + upper.T
        gram.diagonal().sub_(upper.diagonal())
        cross = self.cross
        if self.n_skip:  # the input's dense columns after the codes and the bias
            gram = torch.cat([torch.cat([gram, self.codes_skip], 1),
                              torch.cat([self.codes_skip.T, self.skip_gram], 1)], 0)
            cross = torch.cat([cross, self.skip_cross], 0)
        diag = gram.diagonal().clone()
        ridge = RIDGE * diag + 1e-6  # never-firing latents: a tiny ridge alone
        if prior is not None and prior_tokens > 0 and self.tokens > 0:
            pull = diag * (prior_tokens / self.tokens)
            pull[n:] = 0.0  # the output bias (and a skip path) has no prior
            ridge = ridge + pull
            cross = cross.clone()
            cross[:n] += pull[:n, None] * prior.float()
        gram.diagonal().add_(ridge)
        scale = gram.diagonal().rsqrt()
        scaled = gram.mul_(scale[:, None]).mul_(scale[None, :])
        chol, info = torch.linalg.cholesky_ex(scaled)
        if int(info) == 0:
            solution = torch.cholesky_solve(cross * scale[:, None], chol) * scale[:, None]
        else:  # float32 rounding made it indefinite: float64, then the general solver
            scaled = scaled.double()
            chol, info = torch.linalg.cholesky_ex(scaled)
            rhs = (cross * scale[:, None]).double()
            solution = (torch.cholesky_solve(rhs, chol) if int(info) == 0
                        else torch.linalg.lstsq(scaled, rhs).solution) * scale[:, None].double()
        skip = solution[n + 1:].T.contiguous() if self.n_skip else None
        return solution[:n], solution[n], diag[:n] > 0, skip

    @torch.no_grad()
    def apply_(self, sae: torch.nn.Module, prior_tokens: float = 0.0) -> int:
        """Write the refit decoder into `sae` (latents that never fired keep their rows), with
        its current rows as the prior worth `prior_tokens` tokens; returns the number of tokens it
        was fitted on."""
        rows, bias, fired, skip = self.solve(sae.W_dec, prior_tokens)
        if not (torch.isfinite(rows).all() and torch.isfinite(bias).all()
                and (skip is None or torch.isfinite(skip).all())):
            raise FloatingPointError("decoder refit: non-finite solution")
        w_dec = sae.W_dec
        w_dec[fired] = rows[fired].to(w_dec)
        bias = bias.to(sae.b_dec)
        if not sae.transcoder:  # centre the input at the new bias, every pre-activation kept
            sae.b_enc.add_(sae.enc_weight @ (bias - sae.b_dec))
        sae.b_dec.copy_(bias)
        if skip is not None:
            sae.W_skip.copy_(skip.to(sae.W_skip))
        return self.tokens


@functools.cache
def _pairs(m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (i, j), i <= j, of the pairs among m codes."""
    first, second = torch.triu_indices(m, m, device=device)
    return first, second


def refit_decoder_(sae: torch.nn.Module, batches: Iterable[torch.Tensor],
                   prior_tokens: float = 0.0) -> int:
    """Refit `sae`'s decoder on `batches` (a pass over its training tokens), its current rows a
    prior worth `prior_tokens` tokens; returns the tokens used."""
    refit = DecoderRefit(sae.n_latents, sae.n_outputs, sae.W_dec.device,
                         sae.n_inputs if sae.skip else 0)
    for x in batches:
        refit.observe(sae, x)
    return refit.apply_(sae, prior_tokens)
