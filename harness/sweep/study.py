"""The Optuna side of a sweep: storage, sampler, pruner and the study's record (its leases and
reaping: harness.sweep.leases).

Budget (harness.sweep.budget): `n_trials` counts every trial of the study except those
superseded by a retry, and enqueued (WAITING) trials always run. Workers check the budget and
ask for their trial under one lock (a file lock beside a journal or SQLite file, a PostgreSQL
advisory lock across nodes), so the budget is exact; only on other servers (MySQL) may parallel
workers overshoot by at most one trial each, as with Optuna's MaxTrialsCallback.
"""

from __future__ import annotations

import inspect
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib
import optuna

from harness.core.training.config import DataOptions
from harness.sweep.space import (
    PRUNERS,
    SAMPLERS,
    LoadedSpace,
    ParamSpec,
    SpaceError,
)
from harness.sweep.storage import (
    open_storage,
    storage_holds_anything,
)
from harness.sweep.urls import masked
from harness.sweep.warm_start import warm_start, warm_start_sources
from harness.version import saesweep_version

STORAGE_ENV = "SAESWEEP_STORAGE"
"""Where a storage URL may be given instead of --storage (and how workers receive it: a URL in
an environment variable stays out of `ps` and the logs)."""


# ------------------------------------------------------------------------------ construction
def journal_path(results_dir: str | Path, study_name: str) -> Path:
    """Where a sweep keeps its study by default: <results_dir>/<study>/study.journal."""
    return Path(results_dir) / study_name / "study.journal"


def default_storage(loaded: LoadedSpace) -> str:
    return str(journal_path(loaded.space.results_dir, loaded.space.study.name))


def storage_url(flag: str | None, space_value: str | None, default: str) -> str:
    """--storage, else $SAESWEEP_STORAGE, else the space's study.storage, else the default."""
    return flag or os.environ.get(STORAGE_ENV) or space_value or default


def make_sampler(loaded: LoadedSpace, seed: int) -> optuna.samplers.BaseSampler:
    cfg = loaded.space.sampler
    if cfg.type == "grid":
        # GridSampler gives trial n the n-th point of a grid order shuffled by its seed: every
        # worker must use the same seed, or they run some points twice and skip others
        return optuna.samplers.GridSampler(loaded.grid(), seed=loaded.space.study.seed)
    return SAMPLERS[cfg.type](seed=seed, **cfg.options)


def make_pruner(loaded: LoadedSpace) -> optuna.pruners.BasePruner:
    cfg = loaded.space.pruner
    cls = PRUNERS[cfg.type]
    return optuna.pruners.NopPruner() if cls is None else cls(**cfg.options)


def resolved_settings(obj: Any) -> dict[str, Any]:
    """Every constructor argument of an Optuna sampler/pruner with the value in effect."""
    out: dict[str, Any] = {"class": type(obj).__name__}
    for name in inspect.signature(type(obj).__init__).parameters:
        if name == "self":
            continue
        for attr in (f"_{name}", name):
            if not hasattr(obj, attr):
                continue
            value = getattr(obj, attr)
            if isinstance(value, bool | int | float | str) or value is None:
                out[name] = value
                break
    return out


def worker_seed(study_seed: int, worker_index: int, n_existing: int) -> int:
    """Distinct per worker and per re-run, so resumed random samplers do not repeat themselves."""
    return (study_seed * 1_000_003 + worker_index * 7919 + n_existing * 104_729) % (2**31 - 1)


def warm_start_plan(loaded: LoadedSpace, storage_url: str) -> list[tuple[str, optuna.Study]]:
    """The checked warm-start sources of a study not created yet; [] when it exists (a resumed
    study is left as it is). Writes nothing: a refused source leaves no study behind."""
    s = loaded.space
    if not s.study.warm_start:
        return []
    if storage_holds_anything(storage_url):
        try:
            optuna.load_study(study_name=s.study.name, storage=open_storage(storage_url))
            return []
        except KeyError:
            pass
    return warm_start_sources(loaded, storage_url)


def create_study(loaded: LoadedSpace, storage_url: str,
                 sources: list[tuple[str, optuna.Study]] | None = None) -> optuna.Study:
    """Create the study (or load it when resuming) and record how it is run; a new study starts
    from `sources` (else those `warm_start_plan` finds)."""
    s = loaded.space
    if sources is None:
        sources = warm_start_plan(loaded, storage_url)
    storage = open_storage(storage_url, s.faults)
    sampler = make_sampler(loaded, worker_seed(s.study.seed, 0, 0))
    pruner = make_pruner(loaded)
    directions = [optuna.study.StudyDirection[d.upper()] for d in s.directions]
    try:
        existing = optuna.load_study(study_name=s.study.name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None and list(existing.directions) != directions:
        raise SpaceError(f"{loaded.path}: objectives: study {s.study.name!r} in "
                         f"{masked(storage_url)} has "
                         f"directions {[d.name.lower() for d in existing.directions]}, the space "
                         f"asks for {s.directions}; use another study name")
    definition = study_definition(loaded)
    fingerprint = joblib.hash(definition)
    if existing is not None:
        _refuse_changed_definition(existing, definition, fingerprint, loaded, storage_url)
    if existing is not None:
        sources = []
    study = optuna.create_study(study_name=s.study.name, storage=storage, sampler=sampler,
                                pruner=pruner, directions=s.directions, load_if_exists=True)
    attrs = study.user_attrs
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {
        "space": loaded.raw_masked(),
        "space_file": str(loaded.path),
        "objectives": [o.model_dump() for o in s.objectives],
        "sampler": {"type": s.sampler.type, "options": s.sampler.options,
                    "resolved": resolved_settings(sampler)},
        "pruner": {"type": s.pruner.type, "options": s.pruner.options,
                   "resolved": resolved_settings(pruner),
                   "dead_features": s.pruner.dead_features.model_dump()
                   if s.pruner.dead_features else None,
                   "r2_floor": s.pruner.r2_floor.model_dump() if s.pruner.r2_floor else None},
        "data": {**s.data.model_dump(), "d": loaded.d},
        "n_trials": s.budget.n_trials,
        "optuna_version": optuna.__version__,
        "saesweep_version": saesweep_version(),
        "results_dir": str(Path(s.results_dir) / s.study.name),
        "storage": masked(storage_url),
        "definition": definition,
        "fingerprint": fingerprint,
    }
    if "created" not in attrs:
        record["created"] = now
    record["invocations"] = [*attrs.get("invocations", []), now]
    for key, value in record.items():
        study.set_user_attr(key, value)
    warm = warm_start(study, loaded, sources)
    if warm.copied or warm.lower_rungs:
        study.set_user_attr("warm_started", {"from": s.study.warm_start, "trials": warm.copied,
                                             "lower_rungs": warm.lower_rungs})
    return study


def study_definition(loaded: LoadedSpace) -> dict[str, Any]:
    """What a study's trials are comparable on: its objectives, its data (the activation run,
    its width, the held-out split) and its parameter distributions. Budget, workers, sampler,
    pruner and W&B may change between runs of one study; these (and the rungs) may not."""
    s = loaded.space
    rungs = {"fidelity": s.fidelity.model_dump()} if s.fidelity is not None else {}
    return {
        **rungs,  # only when set: the definitions (fingerprints) of studies without rungs stay
        "objectives": [o.model_dump() for o in s.objectives],
        "data": {"store": str(Path(s.data.store).resolve()), "run_id": s.data.run_id,
                 "layer_signature": s.data.layer_signature, "d": loaded.d,
                 "max_tokens": s.data.max_tokens,
                 "holdout_fraction": s.training.get("holdout_fraction",
                                                    DataOptions.holdout_fraction)},
        "params": {name: spec.model_dump() if isinstance(spec, ParamSpec) else spec
                   for name, spec in s.params.items()},
    }


def _refuse_changed_definition(study: optuna.Study, definition: dict[str, Any],
                               fingerprint: str, loaded: LoadedSpace, storage_url: str) -> None:
    """A SpaceError naming what differs, when the study was defined otherwise (joblib.hash of
    the definition). Studies made before fingerprints were recorded are adopted as they are."""
    attrs = study.user_attrs
    if attrs.get("fingerprint") in (None, fingerprint):
        return
    before = attrs.get("definition", {})
    now = json.loads(json.dumps(definition))  # as storage returns it: tuples are lists
    changes = []
    for section, new_section in now.items():
        old_section = before.get(section)
        for key in _keys(old_section, new_section):
            old, new = _item(old_section, key), _item(new_section, key)
            if old != new:
                changes.append(f"{section}[{key}]: {old!r} -> {new!r}" if isinstance(key, int)
                               else f"{section}.{key}: {old!r} -> {new!r}")
    raise SpaceError(
        f"{loaded.path}: study {loaded.space.study.name!r} in {masked(storage_url)} was run "
        "with another "
        f"definition, so its trials would not be comparable: {'; '.join(changes) or 'changed'}. "
        "Start a new study instead (--study NEW_NAME), or restore the space it was run with.")


def _keys(old: Any, new: Any) -> list[Any]:
    if isinstance(old, list) or isinstance(new, list):  # objectives: compared by position
        return list(range(max(len(old or []), len(new or []))))
    return sorted(set(old or {}) | set(new or {}))


def _item(section: Any, key: Any) -> Any:
    if isinstance(section, list):
        return section[key] if key < len(section) else None
    return (section or {}).get(key)
