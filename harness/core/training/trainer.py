"""The one shared SAE trainer: every SAE in the project (demo, tests, sweep trials) trains here.

    history = SaeTrainer(sae).train(store=store, run_id="acts", layer_signature="layer_6",
                                    config=SaeTrainingConfig(epochs=2, batch_size=4096, lr=2e-4))
    history["r2"], history["l0"], history["dead_features"]

Loss = the activation's reconstruction term (the MSE; Matryoshka: its prefixes' mean) + the
warmed-up sparsity penalties (l1_lambda x std x L1, l0_lambda x var x L0) + auxk_alpha x AuxK.
Each evaluation computes held-out r2 / fvu / mse / l0 exactly as in docs/metrics.md, plus the
dead-feature count over the last `dead_window_tokens` training tokens; callbacks see it and may
raise `StopTraining` (this is how the sweep prunes). A non-finite or exploding loss raises
`TrainingDiverged` with the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.core.loader import ActivationLoader
from harness.core.runtime.cpu_memory import reuse_freed_blocks
from harness.core.sae import SparseAutoencoder, data_center
from harness.core.store import (
    ActivationSource,
    LocalStore,
    PairedSource,
    StoreError,
    open_store,
)
from harness.core.store.statistics import participation_ratio
from harness.core.training.config import LOCKSTEP_FIELDS, SaeTrainingConfig
from harness.core.training.loop import drive
from harness.core.training.memory import planned_loader
from harness.core.training.results import (
    Callback,
    FinalEvaluator,
    MemberOutcome,
    TrainingHistory,
)
from harness.core.training.run import Centers, MemberRun


@dataclass
class LockstepMember:
    """One SAE of a pack trained on the same batches (see SaeTrainer.train_lockstep)."""

    sae: SparseAutoencoder
    """The SAE to train (moved to the config's device)."""
    config: SaeTrainingConfig
    """Its training config; the lockstep fields must match the pack's."""
    callbacks: Sequence[Callback] = ()
    """See every evaluation; may raise StopTraining."""
    training_run_id: str | None = None
    """The run's name; None = a fresh one (outputs.new_run_id)."""
    save_dir: str | Path | None = None
    """Folder to save into; None = `<store>/runs/<training_run_id>/`."""
    save: bool = True
    """Write the SAE and its records when the run ends."""
    extra_meta: dict[str, Any] | None = None
    """Added to meta.json and the W&B config (e.g. a sweep's sampled parameters)."""
    checkpoint_path: str | Path | None = None
    """A resumable checkpoint is written here (config.checkpoint_every, and when stopped) and
    resumed from when the file exists; it is removed once the run ends."""
    final_evaluators: Sequence[FinalEvaluator] = ()
    """Run once on the finished SAE; what they return goes to history.final_metrics and W&B."""


class SaeTrainer:
    """Trains one SparseAutoencoder on one (activation run, layer) of a store."""

    def __init__(self, sae: SparseAutoencoder) -> None:
        self.sae = sae

    def train(
        self,
        store: LocalStore | str | Path,
        run_id: str,
        layer_signature: str,
        config: SaeTrainingConfig | None = None,
        callbacks: Iterable[Callback] = (),
        training_run_id: str | None = None,
        save_dir: str | Path | None = None,
        save: bool = True,
        extra_meta: dict[str, Any] | None = None,
        target_layer_signature: str | None = None,
    ) -> TrainingHistory:
        """Train, evaluate, save under `<store>/runs/<training_run_id>/` (or `save_dir`).

        With `target_layer_signature` it trains a transcoder: it reads `layer_signature` and
        reconstructs that layer of the same run (the SAE's n_outputs its width; FVU, R² and
        the loss are of the target).

        Returns the history. Raises TrainingDiverged on a non-finite or exploding loss (nothing
        is saved for such a run) and StoreError on bad activation data. `extra_meta` (e.g. a
        sweep's sampled parameters) goes into meta.json and the W&B config.
        """
        member = LockstepMember(self.sae, config or SaeTrainingConfig(), tuple(callbacks),
                                training_run_id, save_dir, save, extra_meta)
        outcome = self.train_lockstep(store, run_id, layer_signature, [member],
                                      target_layer_signature=target_layer_signature)[0]
        if outcome.error is not None:
            raise outcome.error
        assert outcome.history is not None
        return outcome.history

    @staticmethod
    def train_lockstep(store: LocalStore | str | Path, run_id: str, layer_signature: str,
                       members: Sequence[LockstepMember],
                       stop: Callable[[], str | None] | None = None,
                       target_layer_signature: str | None = None) -> list[MemberOutcome]:
        """Train several SAEs on the same batches: each batch is read and moved once for all.

        Members must agree on the lockstep fields (config.LOCKSTEP_FIELDS); everything else
        (size, k, lr, ...) may differ. Each member is evaluated, stopped by its callbacks, failed
        by divergence and saved on its own; a member that stops drops out of the pack and the
        rest go on.

        `stop` is polled after every batch: when it returns a reason, every active member with a
        checkpoint path writes its checkpoint and TrainingInterrupted is raised. A member whose
        checkpoint exists resumes from it: same weights, optimiser, schedule, dead-feature
        counters, history and data position (the batches before it are skipped).
        """
        if not members:
            return []
        store = open_store(store)
        first = members[0].config
        for m in members[1:]:
            for name in LOCKSTEP_FIELDS:
                if getattr(m.config, name) != getattr(first, name):
                    raise ValueError(f"lockstep members disagree on {name}: "
                                     f"{getattr(first, name)!r} vs {getattr(m.config, name)!r}")
        source = (store.open(run_id, layer_signature) if target_layer_signature is None
                  else store.open_pair(run_id, layer_signature, target_layer_signature))
        for m in members:
            check_shape(m.sae, source)
        participation_ratio(source)  # the default lr's input, read before the memory plan
        device = _resolve_device(first.device, members[0].sae)
        dtype = getattr(torch, first.dtype) if first.dtype else members[0].sae.W_dec.dtype
        loader = ActivationLoader(source, first.loader_config(), device=device, dtype=dtype)
        loader = planned_loader(loader, list(members), device)  # sized by the byte budget
        if loader.memory_plan is not None and loader.memory_plan.reuse_bytes:
            reuse_freed_blocks(loader.memory_plan.reuse_bytes)
        problem = loader.heldout_problem()  # e.g. 10 tokens: R² would be -inf, not a result
        if problem:
            raise StoreError(f"activation run {run_id!r} layer {source.layer_signature!r}: "
                             f"{problem}")
        # the same sample and method for every member: compute b_dec's starting centre once
        # (a transcoder's: its target's, and its input's for b_enc)
        inputs, sample = members[0].sae.split_batch(_first_tokens(loader,
                                                                  first.b_dec_init_tokens))
        centers = None
        if first.b_dec_init != "zeros":
            centers = Centers(data_center(sample, first.b_dec_init),
                              data_center(inputs, first.b_dec_init)
                              if isinstance(source, PairedSource) else None)
        # the per-element standard deviation: the unit of the sparsity penalties
        scale = float(sample.var(dim=0, unbiased=False).mean().sqrt())  # no [N, d] temporaries
        total_steps = first.planned_steps(loader.batches_per_epoch)
        runs = [MemberRun(m, store, source, loader, centers, scale, device, total_steps)
                for m in members]
        try:
            drive(loader, runs, first, stop)
        except BaseException as e:  # an interrupt: close every W&B run as failed
            for run in runs:
                run.close_wandb(e)
            raise
        return [run.finish() for run in runs]


def check_shape(sae: SparseAutoencoder, source: ActivationSource) -> None:
    """ValueError unless `sae` reads (and, for a transcoder, writes) the source's widths; an SAE
    trained on a pair becomes a transcoder (b_dec is no longer subtracted from its input, and its
    decoder starts at zero, as a transcoder's)."""
    where = f"activation run {source.run_id!r} layer {source.layer_signature!r}"
    if isinstance(source, PairedSource):
        if (sae.n_inputs, sae.n_outputs) != (source.n_inputs, source.n_outputs):
            raise ValueError(f"{where} with target {source.target_layer_signature!r} has d_in "
                             f"{source.n_inputs} and d_out {source.n_outputs}, but the SAE has "
                             f"n_inputs={sae.n_inputs} and n_outputs={sae.n_outputs}")
        if not sae.transcoder:  # made as an SAE: it starts as a transcoder does
            sae.transcoder = True
            with torch.no_grad():
                sae.W_dec.zero_()
        return
    if sae.transcoder:
        raise ValueError(f"the SAE is a transcoder (n_outputs={sae.n_outputs}, skip={sae.skip}):"
                         " train it with target_layer_signature= (the layer it reconstructs)")
    if source.d != sae.n_inputs:
        raise ValueError(f"{where} has d={source.d}, but the SAE has n_inputs={sae.n_inputs}")


def _resolve_device(name: str | None, sae: SparseAutoencoder) -> torch.device:
    if name is None:
        return sae.W_dec.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _first_tokens(loader: ActivationLoader, n: int) -> torch.Tensor:
    parts, have = [], 0
    for x in loader.train_batches(epoch=0):
        parts.append(x)
        have += x.shape[0]
        if have >= n:
            break
    return torch.cat(parts)[:n]
