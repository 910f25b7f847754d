"""A sweep's sparse probing and absorption (the space's evaluation.sparse_probing and
evaluation.absorption): checked, and their examples embedded into the saesweep cache, once by
the sweep; then read from there by every worker to score its finished trials."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

from harness.core.sae import SparseAutoencoder
from harness.core.training.results import FinalEvaluator
from harness.data.models import LoadedModel, load_model
from harness.errors import SaesweepError
from harness.sweep.space import LoadedSpace, SpaceError

_MODELS: dict[tuple[str, str], LoadedModel] = {}
"""Each (model, device) loaded once per process, or lent by the downstream evaluation."""


def share_model(name: str, device: str, lm: LoadedModel) -> None:
    """Let the tasks use `lm` (the downstream evaluation's) instead of loading `name` again."""
    _MODELS.setdefault((name, device), lm)


def _model(name: str, device: str) -> LoadedModel:
    if (name, device) not in _MODELS:
        _MODELS[name, device] = load_model(name, device, causal=True)
    return _MODELS[name, device]


@functools.cache
def _probing(model: str, layer: str, datasets: tuple[str, ...] | None, device: str) -> list:
    """The datasets' split embeddings (cached on disk)."""
    from harness.evaluate.probing_data import probing_sets, resolve_datasets

    sets, _ = probing_sets(_model(model, device), layer,
                           resolve_datasets(list(datasets) if datasets else None))
    return sets


@functools.cache
def _baseline(model: str, layer: str, datasets: tuple[str, ...] | None,
              device: str) -> dict[str, float]:
    """The probe on the raw activations: once per worker, never in the sweep's own process."""
    from harness.evaluate.sparse_probing import baseline

    return baseline(_probing(model, layer, datasets, device))


@functools.cache
def _letters(model: str, layer: str, words: int, device: str) -> tuple:
    """The first-letter task and the letters its probe reads (cached on disk)."""
    from harness.evaluate.absorption import letters_measured
    from harness.evaluate.absorption_data import letter_task

    task, _ = letter_task(_model(model, device), layer, words)
    return task, letters_measured(task)


def check_latent_tasks(loaded: LoadedSpace, device: str = "cpu") -> None:
    """Refuse what cannot be measured (a transcoder, a missing sae-probes install, an unknown
    dataset, a layer the model lacks or of another width, too few letters its probe reads), then
    embed the tasks' examples into the saesweep cache (not the study's folder) unless there."""
    ev = loaded.space.evaluation
    sections = {n: s for n, s in (("sparse_probing", ev.sparse_probing),
                                  ("absorption", ev.absorption)) if s is not None}
    if not sections:
        return
    where = f"{loaded.path}: evaluation"
    if loaded.space.data.target_layer_signature is not None:
        raise SpaceError(f"{where}.{next(iter(sections))}: measured on an SAE's own layer; a "
                         "transcoder reads one layer and writes another")
    probing = ev.sparse_probing
    if probing is not None:
        from harness.evaluate.probing_data import resolve_datasets

        try:
            resolve_datasets(probing.datasets)
        except SaesweepError as e:
            raise SpaceError(f"{where}.sparse_probing.datasets: {e}") from e
    for name, section in sections.items():
        start = time.perf_counter()
        try:
            if name == "sparse_probing":
                sets = _probing(section.model, section.layer, _names(section), device)
                width = sets[0].x_train.shape[1]
                what = f"{len(sets)} datasets"
            else:
                task, letters = _letters(section.model, section.layer, section.words, device)
                width, what = task.x_train.shape[1], f"{len(letters)} letters"
                if len(letters) < section.min_letters:
                    raise SpaceError(f"{where}.absorption: the first-letter probe at "
                                     f"{section.layer} reaches F1 > 0.6 on {len(letters)} "
                                     f"letters, fewer than min_letters={section.min_letters} "
                                     "(more words, or another layer)")
        except SpaceError:
            raise
        except (SaesweepError, OSError, ValueError) as e:
            raise SpaceError(f"{where}.{name}: {e}") from e
        if loaded.d and width != loaded.d:
            raise SpaceError(f"{where}.{name}.layer: {section.layer} of {section.model} has "
                             f"width {width}, but the store's activations have d={loaded.d}")
        print(f"{name}: {what} at {section.layer} of {section.model} ready in "
              f"{time.perf_counter() - start:.1f} s (saesweep cache)")


def _names(section: Any) -> tuple[str, ...] | None:
    return tuple(section.datasets) if section.datasets else None


def latent_evaluators(loaded: LoadedSpace, device: str) -> list[FinalEvaluator]:
    """What a trial runs on its finished SAE: sparse probing and absorption, under their table
    names (each timed as <name>_s by the trainer)."""
    ev = loaded.space.evaluation
    out: list[FinalEvaluator] = []
    if (p := ev.sparse_probing) is not None:
        def sparse_probing(sae: SparseAutoencoder) -> Mapping[str, float]:
            from harness.evaluate.sparse_probing import sparse_probing as measure

            key = (p.model, p.layer, _names(p), device)
            return {**measure(sae, _probing(*key)), **_baseline(*key)}

        out.append(sparse_probing)
    if (a := ev.absorption) is not None:
        def absorption(sae: SparseAutoencoder) -> Mapping[str, float]:
            from harness.evaluate.absorption import absorption as measure

            task, letters = _letters(a.model, a.layer, a.words, device)
            return measure(sae, task, letters, a.min_letters).to_dict()

        out.append(absorption)
    return out
