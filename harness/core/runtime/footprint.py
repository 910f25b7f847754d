"""Device memory one training run needs, estimated from its shape before it starts: what a sweep
checks before it packs several trials on one GPU.

The terms, in bytes (f = 4 for float32; a = 2 under bf16 autocast, else 4):
- parameters, their gradients, Adam's two moments and their moving average
  (harness.core.training.weight_average): 5 * (2 n d + n + d) * f;
- a training step: the pre-activations [B, n], top-k's workspace and AuxK's dead columns, each
  B n a (the dense reference backward adds two [B, n] float32 gradients);
- an evaluation batch's float32 pre-activations, B n f, and the held-out tokens E d f;
- the decoder refit: its [n+1]^2 sums in float32, their float64 copy and Cholesky factor, and one
  batch's code pairs B (k+1)^2 (8 + 4) (wide codes, ReLU and JumpReLU: a dense [B, n+1] and its
  [n+1]^2 product);
- the encoder refit (harness.core.training.encoder_refit): eight [n, d+1] float32 vectors of its
  solve, the k int32 latent indices of each of its tokens, and one batch's gathered rows B k (d+1) f
  twice; with it on, a copy of the trained parameters through both refits (an interrupt's
checkpoint); - the batches in flight: (prefetch + 2) B d f, and epoch 0's first batches kept for the
  finish (at most harness.core.training.finish.STASH_BYTES, 256 MiB) when it refits.
Peak = parameters + batches + held-out tokens + the largest of step, evaluation and the refits
(they come one after another). It leaves out the CUDA context (about 0.5 GiB a process), which a
packing check adds once per worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.training.finish import STASH_BYTES
from harness.core.training.refit import MAX_PAIRED_CODES

F32 = 4
CUDA_CONTEXT_BYTES = 512 << 20
"""What a process's CUDA context takes on the GPU, outside torch's allocator."""


@dataclass(frozen=True)
class TrainingShape:
    """What decides a training run's memory."""

    d: int
    """Input width."""
    n_latents: int
    """Dictionary size."""
    k: int
    """Candidates per token (BatchTopK: 4k; ReLU and JumpReLU: every latent, their worst case)."""
    batch_size: int
    """Tokens per step."""
    eval_tokens: int = 65536
    """Held-out tokens kept on the device."""
    autocast_bf16: bool = True
    """bf16 pre-activations (the CUDA default)."""
    sparse_backward: bool = True
    """The sparse backward (the default), else the dense reference."""
    refit: bool = True
    """Whether the decoder refit runs (n_latents within its cap)."""
    encoder_refit_tokens: int = 1 << 20
    """Tokens the encoder refit keeps indices for (0: no encoder refit)."""
    prefetch_batches: int = 2
    """Batches prepared ahead."""


def training_bytes(shape: TrainingShape, members: int = 1) -> int:
    """Estimated peak device memory of training `shape` (bytes); `members` > 1: a lockstep pack
    of that many runs of it, which share the batches and the held-out tokens and step one after
    another (so one step's temporaries), but each keeps its parameters and its refit sums."""
    d, b = shape.d, shape.batch_size
    data = (shape.prefetch_batches + 2) * b * d * F32 + shape.eval_tokens * d * F32
    if shape.refit:
        data += STASH_BYTES
    return model_bytes([shape] * members) + data


def model_bytes(shapes: list[TrainingShape]) -> int:
    """The SAEs' part of the peak (no batches, no held-out tokens): every member's parameters,
    gradients, Adam state and average, and the largest member's step, evaluation or refit
    (members step one after another). On a CPU this is host memory
    (harness.core.runtime.memory_plan)."""
    members = len(shapes)
    return (sum(_params(s) for s in shapes)
            + max(_largest_phase(s, members) for s in shapes))


def _params(shape: TrainingShape) -> int:
    n, d = shape.n_latents, shape.d
    return 5 * (2 * n * d + n + d) * F32


def _largest_phase(shape: TrainingShape, members: int) -> int:
    """The largest of a step, an evaluation batch and the refits."""
    d, n, k, b = shape.d, shape.n_latents, shape.k, shape.batch_size
    act = 2 if shape.autocast_bf16 else F32
    params = _params(shape)
    step = 3 * b * n * act + (0 if shape.sparse_backward else 2 * b * n * F32)
    evaluation = b * n * F32
    codes = (b * (k + 1) ** 2 * (8 + F32) if k + 1 <= MAX_PAIRED_CODES
             else (b + n + 1) * (n + 1) * F32)  # wide codes: a dense [B, n] and its product
    decoder_refit = members * ((n + 1) ** 2 * (F32 + 8 + 8) + (n + 1) * d * (F32 + 8)) + codes
    encoder_refit = (members * (8 * n * (d + 1) * F32 + shape.encoder_refit_tokens * k * 4)
                     + 2 * b * k * (d + 1) * F32)
    refit = 0
    if shape.refit:
        refit = decoder_refit
        if shape.encoder_refit_tokens:
            refit = max(decoder_refit, encoder_refit) + members * params // 5
    return max(step, evaluation, refit)
