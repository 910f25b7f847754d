"""Several trials on one GPU: the largest trial a space can sample, and the check that the workers
put on each GPU fit in its memory, made before any worker starts.

The estimate is harness.core.runtime.footprint's, for the space's largest shape (the largest
expansion, k, batch and held-out set it can sample, with or without the decoder refit, whichever
needs more) times the trials each worker trains together (lockstep), plus a CUDA context per worker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from harness.core.activations import DEFAULT_ACTIVATION, activation_class
from harness.core.loader import READ_ROWS
from harness.core.runtime.footprint import (
    CUDA_CONTEXT_BYTES,
    TrainingShape,
    model_bytes,
    training_bytes,
)
from harness.core.runtime.memory_plan import default_budget, fixed_bytes
from harness.core.shape import k_for, n_latents_for
from harness.core.training.config import SaeTrainingConfig
from harness.sweep.devices import DeviceError, WorkerSlot
from harness.sweep.space import LoadedSpace, ParamSpec, bounding_values

HEADROOM = 0.95
"""Share of a GPU's memory the packed trials may plan to use (the rest: fragmentation)."""

GiB = 1 << 30


def _possible(loaded: LoadedSpace, name: str) -> list[Any]:
    """The values bounding a training field: sampled, fixed in the space, or its default."""
    space = loaded.space
    if name in space.params:
        return bounding_values(space.params[name])
    if name in space.training:
        return [space.training[name]]
    return [getattr(SaeTrainingConfig(), name)]


def largest_trial(loaded: LoadedSpace) -> tuple[TrainingShape, int]:
    """(the space's most memory-hungry trial on a GPU, its estimated bytes)."""
    d = loaded.d
    params = loaded.space.params
    expansions = [float(v) for v in bounding_values(params["expansion"])]
    n_max = n_latents_for(max(expansions), d)
    k: int | None = None
    if "k" in params:
        k = k_for(n_max, k=max(bounding_values(params["k"])))
    elif "k_fraction" in params:
        k = k_for(n_max, k_fraction=max(float(v) for v in bounding_values(params["k_fraction"])))
    activations = [activation_class(str(name)) for name in
                   bounding_values(params.get("activation", DEFAULT_ACTIVATION))]
    k = max(cls().candidates(k, n_max) for cls in activations)
    # ReLU and JumpReLU step densely while most latents fire: the dense backward's memory
    dense = any(not cls.uses_k for cls in activations)
    cap = int(max(_possible(loaded, "decoder_refit_max_latents")))
    refits = any(bool(v) for v in _possible(loaded, "decoder_refit"))
    encoder_tokens = (int(max(_possible(loaded, "encoder_refit_max_tokens")))
                      if any(bool(v) for v in _possible(loaded, "encoder_refit")) else 0)
    candidates = [n_max]
    if refits and cap < n_max and isinstance(params["expansion"], ParamSpec):
        candidates.append(cap)  # a smaller trial that still refits may need more
    # a transcoder's rows hold input and target, and its weights both widths: price it at their
    # sum (an over-estimate of its weights, exact for its batches)
    width = d + loaded.d_out
    shapes = [TrainingShape(
        d=width, n_latents=n, k=min(k, n), batch_size=int(max(_possible(loaded, "batch_size"))),
        eval_tokens=int(max(_possible(loaded, "max_eval_tokens"))),
        autocast_bf16=all(v is None or bool(v) for v in _possible(loaded, "autocast_bf16")),
        sparse_backward=not dense and all(bool(v) for v in _possible(loaded, "sparse_backward")),
        refit=refits and n <= cap, encoder_refit_tokens=encoder_tokens,
        prefetch_batches=int(max(_possible(loaded, "prefetch_batches"))))
        for n in candidates]
    sized = [(shape, training_bytes(shape, loaded.space.lockstep)) for shape in shapes]
    return max(sized, key=lambda item: item[1])


def check_packing(slots: list[WorkerSlot], loaded: LoadedSpace,
                  gpu_memory: Callable[[str], tuple[str, int]]) -> None:
    """DeviceError unless the workers on each GPU fit in its memory. `gpu_memory(label)` is the
    GPU's (name, total bytes)."""
    per_gpu = Counter(slot.label for slot in slots if slot.label.startswith("cuda"))
    if not per_gpu:
        return
    shape, trial = largest_trial(loaded)
    lockstep = loaded.space.lockstep
    for label, workers in sorted(per_gpu.items()):
        name, total = gpu_memory(label)
        need = workers * (trial + CUDA_CONTEXT_BYTES)
        if need <= HEADROOM * total:
            continue
        fits = int(HEADROOM * total // (trial + CUDA_CONTEXT_BYTES))
        pack = f" x lockstep {lockstep}" if lockstep > 1 else ""
        raise DeviceError(
            f"{label} ({name}, {total / GiB:.1f} GiB): {workers} worker(s){pack} of the largest "
            f"trial the space can sample (n_latents {shape.n_latents}, d {shape.d}, k "
            f"{shape.k}, batch {shape.batch_size}: about {trial / GiB:.1f} GiB each, plus "
            f"{CUDA_CONTEXT_BYTES / GiB:.1f} GiB of CUDA context per worker) need about "
            f"{need / GiB:.1f} GiB, more than {HEADROOM:.0%} of its memory; "
            + (f"use --trials-per-device {fits} or fewer" if fits else
               "not even one fits: lower the expansion, batch_size or lockstep"))


WORKER_BASELINE = 512 << 20
"""What a worker process holds before its first trial (interpreter, torch, harness), counted
against its memory budget."""


def worker_budget(loaded: LoadedSpace, slots: list[WorkerSlot]) -> int:
    """Each worker's host memory budget: the space's training.memory_budget, else the machine's
    default divided among the workers on this node."""
    fixed = loaded.space.training.get("memory_budget")
    return int(fixed) if fixed else default_budget(len(slots))


def check_host_memory(slots: list[WorkerSlot], loaded: LoadedSpace, budget: int) -> None:
    """DeviceError unless each worker's budget holds the space's largest trial
    (harness.core.runtime.memory_plan's least: one batch of tokens beside its fixed part). A CPU
    worker holds the SAEs, their step and the batches in flight; a GPU worker keeps the SAEs on
    the GPU, and its host part is the batches in flight and prefetched."""
    shape, _ = largest_trial(loaded)
    lockstep = loaded.space.lockstep
    row = shape.d * 4  # float32 tokens at most ([input | target] rows for a transcoder)
    least = max(row * shape.batch_size + fixed_bytes(
        d=shape.d, itemsize=4, batch_size=shape.batch_size, read_rows=READ_ROWS,
        model_bytes=model_bytes([shape] * lockstep), host_device=slot.device == "cpu",
        prefetch_batches=shape.prefetch_batches, baseline=WORKER_BASELINE) for slot in slots)
    if least <= budget:
        return
    raise DeviceError(
        f"memory: each of the {len(slots)} worker(s) gets {budget / GiB:.2f} GiB (training."
        "memory_budget, or 80% of the machine's available memory divided among the workers), "
        f"but the largest trial the space can sample (n_latents {shape.n_latents}, d "
        f"{shape.d}, batch {shape.batch_size}{f', lockstep {lockstep}' if lockstep > 1 else ''}"
        f") needs at least {least / GiB:.2f} GiB; use fewer --workers, or a smaller expansion "
        "or batch_size")


def cuda_memory(label: str) -> tuple[str, int]:
    """(name, total bytes) of the GPU this process calls `label` (cuda:N)."""
    import torch

    props = torch.cuda.get_device_properties(int(label.split(":", 1)[1]))
    return props.name, int(props.total_memory)
