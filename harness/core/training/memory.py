"""A run's loader sized by its byte budget (harness.core.runtime.memory_plan): the plan is made from
the split's arithmetic and the members' shapes before a token is read, and refused when the budget
cannot hold the run."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import torch

from harness.core.loader import READ_ROWS, ActivationLoader
from harness.core.runtime.cpu_memory import step_block_bytes
from harness.core.runtime.footprint import TrainingShape, model_bytes
from harness.core.runtime.memory_plan import default_budget, plan_memory, process_memory
from harness.core.training import finish

if TYPE_CHECKING:
    from harness.core.training.trainer import LockstepMember

log = logging.getLogger(__name__)


def member_shape(member: LockstepMember, device: torch.device) -> TrainingShape:
    """What decides a member's memory (harness.core.runtime.footprint)."""
    sae, cfg = member.sae, member.config
    cfg = cfg.resolved_for(device, sae.n_latents, sae.n_inputs, 1)
    refit = cfg.decoder_refit and sae.n_latents <= cfg.decoder_refit_max_latents
    return TrainingShape(
        d=sae.n_inputs, n_latents=sae.n_latents,
        k=sae.activation_fn.candidates(sae.k, sae.n_latents), batch_size=cfg.batch_size,
        eval_tokens=0, autocast_bf16=bool(cfg.autocast_bf16),
        sparse_backward=cfg.sparse_backward and sae.activation_fn.uses_k, refit=refit,
        encoder_refit_tokens=cfg.encoder_refit_max_tokens if refit and cfg.encoder_refit else 0,
        prefetch_batches=0)


def planned_loader(loader: ActivationLoader, members: list[LockstepMember],
                   device: torch.device) -> ActivationLoader:
    """`loader` again, with its buffers sized by the members' memory budget; MemoryBudgetError
    when the budget cannot hold them."""
    first = members[0].config
    source = loader.source
    itemsize = torch.empty(0, dtype=source.dtype).element_size()
    shapes = [member_shape(m, device) for m in members]
    refits = any(s.refit for s in shapes)
    reuse = 0
    if device.type == "cpu" and any(m.config.cpu_reuse_freed_memory for m in members):
        reuse = max(step_block_bytes(m.config.batch_size, m.sae.n_latents) for m in members)
    plan = plan_memory(
        budget=first.memory_budget or default_budget(), d=source.d, itemsize=itemsize,
        n_train=loader.n_train_tokens, n_heldout=loader.n_heldout_tokens,
        planned_tokens=first.planned_tokens(loader.n_train_tokens),
        batch_size=first.batch_size, shard_tokens=_read_rows(loader),
        max_eval_tokens=first.max_eval_tokens,
        shuffle_buffer_tokens=first.shuffle_buffer_tokens,
        in_memory_bytes=first.in_memory_bytes, stash_wanted=finish.STASH_BYTES if refits else 0,
        model_bytes=model_bytes(shapes), host_device=device.type == "cpu",
        prefetch_batches=first.prefetch_batches, baseline=process_memory(), reuse_bytes=reuse)
    config = dataclasses.replace(
        loader.config, shuffle_buffer_tokens=plan.buffer_tokens,
        in_memory_bytes=plan.buffer_tokens * plan.row_bytes if plan.in_memory else 0,
        max_eval_tokens=plan.eval_tokens)
    sized = ActivationLoader(source, config, device=loader.device, dtype=loader.dtype)
    sized.memory_plan = plan
    log.info("%s", plan.describe())
    return sized


def _read_rows(loader: ActivationLoader) -> int:
    """Rows held while a store is read: a piece (READ_ROWS), or a whole padded shard."""
    shards = loader.source.shards
    if any(ref.mask_path is not None or len(ref.shape) != 2 for ref in shards):
        return max(ref.n_tokens for ref in shards)
    return min(READ_ROWS, max(ref.n_tokens for ref in shards))
