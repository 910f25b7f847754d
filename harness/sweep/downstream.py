"""A sweep's downstream evaluation (the space's evaluation.downstream): checked and its reference
passes computed once by the sweep, then loaded by every worker to score its finished trials."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

from harness.core.sae import SparseAutoencoder
from harness.core.store import StoreError
from harness.core.training.results import EvalResult, FinalEvaluator
from harness.evaluate.downstream import DownstreamConfig, DownstreamEvaluator
from harness.sweep.latent_tasks import share_model
from harness.sweep.space import LoadedSpace, SpaceError

REFERENCE_DIR = "downstream"  # under results/<study>/


def reference_dir(study_dir: Path) -> Path:
    return study_dir / REFERENCE_DIR


def check_downstream(loaded: LoadedSpace, study_dir: Path) -> DownstreamEvaluator | None:
    """Load the space's model and its reference passes (from the study's folder when a run
    before computed them, else computed here) and check that the hook point's width is the
    store's d; SpaceError (nothing written) when any of it fails."""
    section = loaded.space.evaluation.downstream
    if section is None:
        return None
    where = f"{loaded.path}: evaluation.downstream"
    try:
        evaluator = DownstreamEvaluator.open(section.config(), reference_dir(study_dir),
                                             write_cache=False)
    except StoreError as e:
        raise SpaceError(f"{where}: {e}") from e
    width = loaded.d_out or loaded.d  # a transcoder's: the module whose output it rebuilds
    if width and evaluator.width != width:
        raise SpaceError(f"{where}.layer: {section.layer} of {section.model} has width "
                         f"{evaluator.width}, but the store's activations have d={width}: "
                         "evaluate at the layer the store was captured from (a transcoder's: "
                         "its target's module)")
    return evaluator


def save_reference(evaluator: DownstreamEvaluator) -> Path:
    """Where the workers find the reference passes (written unless it was read from there: a
    file that could not be read is replaced)."""
    path = evaluator.cache_path
    assert path is not None, "check_downstream gives the evaluator the study's folder"
    if evaluator.computed:
        evaluator.reference.save(path)
    return path


@functools.cache
def _evaluator(cfg: DownstreamConfig, cache_dir: str) -> DownstreamEvaluator:
    evaluator = DownstreamEvaluator.open(cfg, cache_dir=cache_dir)  # once per worker process
    share_model(cfg.model, cfg.device, evaluator.lm)  # sparse probing and absorption use it too
    return evaluator


def final_evaluator(loaded: LoadedSpace, device: str, study_dir: Path) -> FinalEvaluator | None:
    """What a trial runs on its finished SAE: the downstream metrics under their table names."""
    section = loaded.space.evaluation.downstream
    if section is None:
        return None
    cfg = section.config(device)

    def downstream(sae: SparseAutoencoder) -> Mapping[str, float]:
        m = _evaluator(cfg, str(reference_dir(study_dir))).evaluate(sae)
        return {"ce_orig": m.ce_orig, "ce_sae": m.ce_sae, "ce_zero": m.ce_zero,
                "delta_ce": m.delta_ce, "ce_loss_score": m.ce_loss_score, "kl": m.kl,
                "kl_score": m.kl_score, "lm_fvu": m.fvu, "lm_l0": m.l0,
                "downstream_tokens": m.tokens}

    return downstream


def preload_downstream(loaded: LoadedSpace, device: str, study_dir: Path) -> None:
    """Load the worker's evaluator (model and reference) before its first trial."""
    section = loaded.space.evaluation.downstream
    if section is not None:
        _evaluator(section.config(device), str(reference_dir(study_dir)))


class DownstreamProbe:
    """A trainer callback for evaluation.downstream.every: the downstream metrics of the SAE
    being trained, at the first evaluation at or past every `every` steps; a pruning rule reads
    them at the evaluation they were measured at."""

    def __init__(self, evaluate: FinalEvaluator, sae: SparseAutoencoder, every: int) -> None:
        self.evaluate, self.sae, self.every = evaluate, sae, every
        self.next_step = every
        self.step: int | None = None
        self.latest: dict[str, float] = {}

    def __call__(self, r: EvalResult) -> None:
        if r.step < self.next_step:
            return
        self.latest, self.step = dict(self.evaluate(self.sae)), r.step
        self.next_step = (r.step // self.every + 1) * self.every

    def value(self, metric: str, r: EvalResult) -> float | None:
        """`metric` as measured at evaluation `r`, or None when the probe did not run then."""
        return self.latest.get(metric) if self.step == r.step else None


def probe_for(loaded: LoadedSpace, evaluate: FinalEvaluator | None,
              sae: SparseAutoencoder) -> DownstreamProbe | None:
    section = loaded.space.evaluation.downstream
    if evaluate is None or section is None or section.every is None:
        return None
    return DownstreamProbe(evaluate, sae, section.every)
