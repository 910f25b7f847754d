"""Warm start: a new study begins with the complete trials of other studies on the same
activations (`study.warm_start`), so its sampler starts from what is known.

A trial is copied when every parameter it sampled is sampled by this space too, with a value this
space's distribution holds; it keeps its values and record, and is marked `warm_start`
("study:number"), which the budget does not count (harness.sweep.budget).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.sweep.optuna_private import holds
from harness.sweep.space import LoadedSpace, ParamSpec, SpaceError
from harness.sweep.storage import open_storage
from harness.sweep.urls import masked

WARM_ATTR = "warm_start"
"""User attribute of a copied trial: where it came from, "study:number"."""


def warm_start_sources(loaded: LoadedSpace, storage_url: str) -> list[tuple[str, optuna.Study]]:
    """The space's warm-start studies, each checked (SpaceError before anything is written)."""
    return [(name, _source(name, loaded, storage_url)) for name in loaded.space.study.warm_start]


def warm_start(study: optuna.Study, loaded: LoadedSpace,
               sources: list[tuple[str, optuna.Study]]) -> int:
    """Copy the complete trials of `sources` into `study`, which must have no trials yet (a
    resumed study is left as it is); returns how many were copied."""
    if not sources or study.get_trials(deepcopy=False):
        return 0
    copied = 0
    for name, source in sources:
        for trial in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            copy = _copy(trial, loaded, name)
            if copy is not None:
                study.add_trial(copy)
                copied += 1
    return copied


def _source(name: str, loaded: LoadedSpace, storage_url: str) -> optuna.Study:
    """The study `name`: in this study's storage, else in its default journal; checked to be on
    the same activations with the same objectives."""
    s = loaded.space
    where = f"{loaded.path}: study.warm_start: {name!r}"
    try:
        source = optuna.load_study(study_name=name, storage=open_storage(storage_url, s.faults))
    except KeyError:
        journal = Path(s.results_dir) / name / "study.journal"
        if not journal.exists():
            raise SpaceError(f"{where}: no such study in {masked(storage_url)} nor a journal at "
                             f"{journal}") from None
        source = optuna.load_study(study_name=name,
                                   storage=open_storage(str(journal), s.faults))
    data: dict[str, Any] = source.user_attrs.get("data") or {}
    mine = (str(Path(s.data.store).resolve()), s.data.run_id, s.data.layer_signature)
    theirs = (str(Path(str(data.get("store", ""))).resolve()), data.get("run_id"),
              data.get("layer_signature"))
    if theirs != mine:
        raise SpaceError(f"{where}: it trained on {theirs}, this space on {mine}: a warm start "
                         "needs the same activations")
    if [d.name.lower() for d in source.directions] != s.directions:
        raise SpaceError(f"{where}: its objectives' directions "
                         f"{[d.name.lower() for d in source.directions]} differ from "
                         f"{s.directions}")
    return source


def _copy(trial: FrozenTrial, loaded: LoadedSpace, name: str) -> FrozenTrial | None:
    """The trial as a trial of this space, or None when this space could not have sampled it."""
    distributions = {}
    for param, value in trial.params.items():
        spec = loaded.space.params.get(param)
        if not isinstance(spec, ParamSpec):
            return None
        dist = spec.distribution()
        if not holds(dist, value):
            return None
        distributions[param] = dist
    return optuna.trial.create_trial(
        params=dict(trial.params), distributions=distributions, values=trial.values,
        user_attrs={**trial.user_attrs, WARM_ATTR: f"{name}:{trial.number}"},
        intermediate_values=dict(trial.intermediate_values), state=TrialState.COMPLETE)
