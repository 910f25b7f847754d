"""The four places the harness reaches past Optuna's public API, each in one function.

Optuna's storage API addresses trials by their storage id, and a study's storage is what the
harness writes through when it reaps a trial whose worker died (lease expiry) or re-enqueues an
interrupted one; neither has a public accessor (Optuna 4-5). A warm start asks whether a
distribution holds a value, which only a private method answers. The token rungs group a
trial enqueued with some parameters fixed before it is sampled, which only a system attribute
holds.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of `trial` (heartbeats, state and attribute writes by id)."""
    return trial._trial_id


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage `study` reads and writes (reaping and re-enqueueing go through it)."""
    return study._storage


def holds(distribution: optuna.distributions.BaseDistribution, value: object) -> bool:
    """Whether `distribution` could have sampled `value` (a warm-started trial's parameter)."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except ValueError:
        return False


def params_with_fixed(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters, with those `enqueue_trial` fixed before it was sampled (a WAITING
    trial has only those)."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}
