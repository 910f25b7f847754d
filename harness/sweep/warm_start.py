"""Warm start: a new study begins with the complete trials of other studies on the same
activations (`study.warm_start`), so its sampler starts from what is known.

A source must be another study on the same activations whose objectives are the same metrics in
the same directions (its values become this study's values). A trial is copied when it trained
at its study's full budget (a lower token rung's result is not a full result), and every
parameter it sampled is sampled by this space too, with a value this space's distribution holds;
it keeps its values and record (less its rung, which is its own study's), and is marked
`warm_start` ("study:number"), which the budget does not count (harness.sweep.budget).

Every source is checked before anything is written (`warm_start_sources`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.sweep.optuna_private import holds
from harness.sweep.space import LoadedSpace, ParamSpec, SpaceError
from harness.sweep.space.rungs import FIDELITY_ATTR, full_budget, study_rungs
from harness.sweep.storage import open_storage, storage_holds_anything
from harness.sweep.urls import masked

WARM_ATTR = "warm_start"
"""User attribute of a copied trial: where it came from, "study:number"."""


@dataclass(frozen=True)
class WarmStart:
    """What a warm start copied."""

    copied: int
    """Complete full-budget trials copied."""
    lower_rungs: int
    """Complete trials left out because they trained on a token rung below their study's last."""


def warm_start_sources(loaded: LoadedSpace, storage_url: str) -> list[tuple[str, optuna.Study]]:
    """The space's warm-start studies, each checked (SpaceError before anything is written):
    this study's own storage is read only when it already exists (opening a journal creates it)."""
    own = loaded.space.study.name
    where = f"{loaded.path}: study.warm_start"
    for name in loaded.space.study.warm_start:
        if name == own:
            raise SpaceError(f"{where}: {name!r} is this study itself; name another study")
    return [(name, _source(name, loaded, storage_url)) for name in loaded.space.study.warm_start]


def warm_start(study: optuna.Study, loaded: LoadedSpace,
               sources: list[tuple[str, optuna.Study]]) -> WarmStart:
    """Copy the complete full-budget trials of `sources` into `study`, which must have no trials
    yet (a resumed study is left as it is)."""
    if not sources or study.get_trials(deepcopy=False):
        return WarmStart(0, 0)
    copied = lower = 0
    for name, source in sources:
        n_rungs = study_rungs(source)
        for trial in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if not full_budget(trial, n_rungs):
                lower += 1
                continue
            copy = _copy(trial, loaded, name)
            if copy is not None:
                study.add_trial(copy)
                copied += 1
    return WarmStart(copied, lower)


def _source(name: str, loaded: LoadedSpace, storage_url: str) -> optuna.Study:
    """The study `name`: in this study's storage, else in its default journal; checked to be on
    the same activations with the same objectives."""
    s = loaded.space
    where = f"{loaded.path}: study.warm_start: {name!r}"
    source = None
    if storage_holds_anything(storage_url):
        try:
            source = optuna.load_study(study_name=name,
                                       storage=open_storage(storage_url, s.faults))
        except KeyError:
            source = None
    if source is None:
        journal = Path(s.results_dir) / name / "study.journal"
        if not journal.exists():
            raise SpaceError(f"{where}: no such study in {masked(storage_url)} nor a journal at "
                             f"{journal}") from None
        try:
            source = optuna.load_study(study_name=name,
                                       storage=open_storage(str(journal), s.faults))
        except KeyError:
            raise SpaceError(f"{where}: {journal} holds no study {name!r}") from None
    data: dict[str, Any] = source.user_attrs.get("data") or {}
    mine = (str(Path(s.data.store).resolve()), s.data.run_id, s.data.layer_signature)
    theirs = (str(Path(str(data.get("store", ""))).resolve()), data.get("run_id"),
              data.get("layer_signature"))
    if theirs != mine:
        raise SpaceError(f"{where}: it trained on {theirs}, this space on {mine}: a warm start "
                         "needs the same activations")
    wanted = [(o.metric, o.direction) for o in s.objectives]
    recorded = source.user_attrs.get("objectives")
    if not isinstance(recorded, list):
        raise SpaceError(f"{where}: it records no objectives, so its values cannot be matched "
                         f"to this space's {_shown(wanted)}")
    theirs_obj = [(o.get("metric"), o.get("direction")) for o in recorded
                  if isinstance(o, dict)]
    if theirs_obj != wanted:
        raise SpaceError(f"{where}: its objectives {_shown(theirs_obj)} are not this space's "
                         f"{_shown(wanted)}: a copied trial's values would be read as other "
                         "metrics; warm-start only from a study with the same objectives, in "
                         "the same order")
    return source


def _shown(objectives: list[tuple[Any, Any]]) -> str:
    return "[" + ", ".join(f"{d} {m}" for m, d in objectives) + "]"


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
    # its rung is its own study's: here it is a full-budget result from elsewhere
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("rung", FIDELITY_ATTR)}
    return optuna.trial.create_trial(
        params=dict(trial.params), distributions=distributions, values=trial.values,
        user_attrs={**attrs, WARM_ATTR: f"{name}:{trial.number}"},
        intermediate_values=dict(trial.intermediate_values), state=TrialState.COMPLETE)
