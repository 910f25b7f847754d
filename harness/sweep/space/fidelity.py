"""Token-budget rungs as a space declares them (`fidelity:`): each trial's rung, the plan the
budget pays for, and the checks. harness.sweep.fidelity enqueues the rungs' trials."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.sweep.space.schema import FidelitySection, ParamSpec, SpaceError

if TYPE_CHECKING:
    from harness.sweep.space.load import LoadedSpace

FIDELITY_ATTR = "fidelity"
"""The user attribute of a rung's trial (a `Rung` as a mapping)."""


@dataclass(frozen=True)
class Rung:
    """Where a trial stands in the rungs."""

    rung: int
    """Its rung: 0 for a fresh configuration."""
    tokens: int
    """The training tokens of that rung."""
    root: int | None = None
    """The configuration's first trial (whose seed every rung trains with); None = itself."""
    promoted_from: int | None = None
    """The trial of the rung below whose result sent it here."""


def rung_of(trial: Any) -> Rung | None:
    """A trial's rung (an Optuna Trial or FrozenTrial), or None for a trial outside the rungs."""
    attrs = getattr(trial, "user_attrs", None) or {}
    value = attrs.get(FIDELITY_ATTR)
    return Rung(**value) if isinstance(value, dict) else None


def rung_sizes(n0: int, fidelity: FidelitySection) -> list[int]:
    """Configurations per group at each rung."""
    return [n0 // fidelity.reduction ** r for r in range(len(fidelity.tokens))]


def plan_size(fidelity: FidelitySection, n_groups: int, n_trials: int,
              tokens: float | None) -> int:
    """The most fresh configurations per group whose rungs fit `n_trials` trials and `tokens`
    training tokens (0 when not even one fits)."""
    n0 = 0
    while True:
        sizes = rung_sizes(n0 + 1, fidelity)
        trials = n_groups * sum(sizes)
        spent = n_groups * sum(n * t for n, t in zip(sizes, fidelity.tokens, strict=True))
        if trials > n_trials or (tokens is not None and spent > tokens):
            return n0
        n0 += 1


def group_choices(loaded: LoadedSpace) -> list[dict[str, Any]]:
    """Every combination of the group_by parameters' values (one group when there are none)."""
    assert loaded.space.fidelity is not None
    values = []
    for name in loaded.space.fidelity.group_by:
        spec = loaded.space.params[name]
        values.append(list(spec.choices or []) if isinstance(spec, ParamSpec) else [spec])
    names = loaded.space.fidelity.group_by
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def check_fidelity(path: Path, loaded: LoadedSpace, check_data: bool) -> None:
    """Refuse rungs that cannot run as asked (SpaceError naming the key); nothing is written."""
    space = loaded.space
    fidelity = space.fidelity
    if fidelity is None:
        return
    for name in fidelity.group_by:
        spec = space.params.get(name)
        if spec is None:
            raise SpaceError(f"{path}: fidelity.group_by: {name!r} is not a parameter of "
                             f"params ({sorted(space.params)})")
        if isinstance(spec, ParamSpec) and (spec.type != "categorical" or spec.when):
            raise SpaceError(f"{path}: fidelity.group_by: params.{name} must be categorical "
                             "(fresh configurations cycle through its choices) and apply to "
                             "every activation (no 'when')")
    if space.sampler.type == "grid":
        raise SpaceError(f"{path}: fidelity: the grid sampler trains every point once; use "
                         "another sampler with rungs")
    for where in ("training", "params"):
        if "max_train_tokens" in getattr(space, where):
            raise SpaceError(f"{path}: {where}.max_train_tokens: fidelity.tokens sets each "
                             "rung's training tokens; leave max_train_tokens out")
    n_groups = len(group_choices(loaded))
    n0 = plan_size(fidelity, n_groups, space.budget.n_trials, space.budget.tokens)
    if rung_sizes(n0, fidelity)[-1] == 0:
        least = rung_sizes(fidelity.reduction ** (len(fidelity.tokens) - 1), fidelity)
        trials = n_groups * sum(least)
        tokens = n_groups * sum(n * t for n, t in zip(least, fidelity.tokens, strict=True))
        raise SpaceError(f"{path}: budget: one configuration per group ({n_groups} group(s) of "
                         f"fidelity.group_by) reaching the last rung needs n_trials >= {trials}"
                         f" and tokens >= {tokens}; the budget gives n_trials "
                         f"{space.budget.n_trials}, tokens {space.budget.tokens}")
    if check_data and not space.data.synthetic_pending():
        full = loaded.planned_tokens()  # synthetic data not yet generated: checked once it is
        if fidelity.tokens[-1] > full:
            raise SpaceError(f"{path}: fidelity.tokens: the last rung ({fidelity.tokens[-1]}) "
                             f"is more than a trial trains in full ({full} tokens: "
                             "training.epochs over the store's training split); raise epochs or "
                             "lower the rung")
