"""Token-budget rungs as a space declares them (`fidelity:`): each trial's rung, the plan the
budget pays for, and the checks. harness.sweep.rungs enqueues the rungs' trials."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.shape import n_latents_for
from harness.sweep.prediction import PREDICTABLE
from harness.sweep.space.checks import activation_choices, applies, bounding_values
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


def study_rungs(study: Any) -> int | None:
    """How many token rungs a study's space declares (its `fidelity:` as the study recorded it,
    read through the schema), or None without rungs."""
    raw = (getattr(study, "user_attrs", {}).get("space") or {}).get("fidelity")
    return len(FidelitySection.model_validate(raw).tokens) if raw else None


def full_budget(trial: Any, n_rungs: int | None) -> bool:
    """Whether `trial` trained at the full budget: its study has no rungs (`n_rungs` None), or
    the trial is outside them, or on the last one. The one rule the console, the report and
    warm starts compare trials by (a lower rung trained on fewer tokens)."""
    if n_rungs is None:
        return True
    placed = rung_of(trial)
    rung = placed.rung if placed is not None else (trial.user_attrs or {}).get("rung")
    return rung is None or rung >= n_rungs - 1


def rung_sizes(n0: int, fidelity: FidelitySection) -> list[int]:
    """Configurations per group at each rung."""
    return [n0 // fidelity.reduction ** r for r in range(len(fidelity.tokens))]


def plan_size(fidelity: FidelitySection, n_groups: int, n_trials: int,
              tokens: float | None, prices: list[int] | None = None,
              compute: float | None = None, latents: tuple[float, float] = (1.0, 1.0)) -> int:
    """The most fresh configurations per group whose rungs fit `n_trials` trials, `tokens`
    training tokens and `compute` tokens x latents (0 when not even one fits); `prices`: the
    tokens a trial at each rung trains (else the rungs' budgets); `latents`: the latents a fresh
    and a promoted trial are priced at (latent_counts)."""
    prices = prices or fidelity.tokens
    n0 = 0
    while True:
        sizes = rung_sizes(n0 + 1, fidelity)
        trials = n_groups * sum(sizes)
        spent = n_groups * sum(n * t for n, t in zip(sizes, prices, strict=True))
        work = n_groups * sum(n * t * latents[r > 0]
                              for r, (n, t) in enumerate(zip(sizes, prices, strict=True)))
        if trials > n_trials or (tokens is not None and spent > tokens) \
                or (compute is not None and work > compute):
            return n0
        n0 += 1


def latent_counts(loaded: LoadedSpace) -> tuple[float, int]:
    """(the mean, the largest) latents over the expansion's bounding values: what a compute
    budget prices a fresh and a promoted trial at (promotion goes to the wide ones)."""
    d = loaded.d or 1
    values = [n_latents_for(float(e), d)
              for e in bounding_values(loaded.space.params["expansion"])]
    return sum(values) / len(values), max(values)


def trial_compute(loaded: LoadedSpace) -> float:
    """Tokens x latents of the space's widest trial trained in full."""
    return float(loaded.planned_tokens()) * latent_counts(loaded)[1]


@dataclass(frozen=True)
class RungPlan:
    """What a rung study runs: fresh configurations at rung `start`, cycling through the groups,
    and at each later rung the best `sizes[r]` of each group."""

    groups: list[dict[str, Any]]
    """Every combination of the group_by parameters' values."""
    sizes: list[int]
    """Configurations per group at each rung (0 below `start`)."""
    prices: list[int]
    """Training tokens a trial at each rung trains (whole batches: what the budget pays)."""
    fresh: int
    """Fresh configurations in all (at rung `start`)."""
    start: int = 0
    """The rung fresh configurations train at: 0, or the last when the budget pays for no
    rung below it."""
    note: str | None = None
    """What was changed from the space to fit the budget (the console says it)."""

    @property
    def trials(self) -> int:
        """Trials the plan runs in all."""
        return self.fresh + len(self.groups) * sum(self.sizes[self.start + 1:])

    @property
    def tokens(self) -> int:
        """Training tokens the plan pays for in all (every trial trained in full)."""
        fresh = self.fresh * self.prices[self.start]
        return fresh + len(self.groups) * sum(
            n * p for n, p in zip(self.sizes[self.start + 1:], self.prices[self.start + 1:],
                                  strict=True))


def rung_plan(loaded: LoadedSpace, path: Path | None = None) -> RungPlan:
    """The plan the budget pays for: n0 configurations per group at rung 0 and
    n0 // reduction**r at rung r, n0 the largest that fits budget.n_trials and budget.tokens.
    A budget too small for one configuration of every group to reach the last rung runs its
    trials at the last rung only (no rungs), cycling through the groups, and says so; a token
    budget smaller than one full trial is a SpaceError."""
    space = loaded.space
    fidelity = space.fidelity
    assert fidelity is not None
    path = path or loaded.path
    groups = group_choices(loaded)
    prices = rung_prices(loaded)
    budget = space.budget
    latents = latent_counts(loaded)
    n0 = plan_size(fidelity, len(groups), budget.n_trials, budget.tokens, prices,
                   budget.compute, latents)
    sizes = rung_sizes(n0, fidelity)
    if sizes[-1] > 0:
        return RungPlan(groups=groups, sizes=sizes, prices=prices, fresh=n0 * len(groups))
    last = len(prices) - 1
    fit = budget.n_trials
    if budget.tokens is not None:
        fit = min(fit, int(budget.tokens // prices[-1]))
    if budget.compute is not None:
        fit = min(fit, int(budget.compute // (prices[-1] * latents[1])))
        if fit == 0:
            raise SpaceError(f"{path}: budget.compute: {budget.compute:g} tokens x latents is "
                             f"less than one trial at the last rung of the widest SAE costs "
                             f"({prices[-1] * latents[1]:g}); raise budget.compute")
    if fit == 0:
        raise SpaceError(f"{path}: budget.tokens: {budget.tokens:g} tokens is less than one "
                         f"trial at the last rung trains ({prices[-1]} tokens); raise "
                         "budget.tokens")
    least = rung_sizes(fidelity.reduction ** last, fidelity)
    need_trials = len(groups) * sum(least)
    need_tokens = len(groups) * sum(n * p for n, p in zip(least, prices, strict=True))
    compute = f", compute {budget.compute:g}" if budget.compute is not None else ""
    names = ", ".join(fidelity.group_by) or "the study"
    left = (f"; the groups left without a trial: {groups[fit:]}" if fit < len(groups) else "")
    note = (f"rungs: one configuration per {names} reaching the last rung needs n_trials >= "
            f"{need_trials} and tokens >= {need_tokens} (the budget: n_trials "
            f"{budget.n_trials}, tokens {budget.tokens}{compute}), so {fit} trial(s) run at the "
            f"full budget only ({prices[-1]} tokens each), cycling through the groups{left}")
    sizes = [0] * last + [-(-fit // len(groups))]
    return RungPlan(groups=groups, sizes=sizes, prices=prices, fresh=fit, start=last, note=note)


def rung_prices(loaded: LoadedSpace) -> list[int]:
    """Training tokens a trial at each rung trains: whole batches, the most over the space's
    batch sizes and epochs; the rungs' budgets themselves while synthetic data is not generated
    yet (the plan is checked again once it is)."""
    fidelity = loaded.space.fidelity
    assert fidelity is not None
    if loaded.space.data.synthetic_pending() or not loaded.d:
        return list(fidelity.tokens)
    return [loaded.planned_tokens(max_train_tokens=t) for t in fidelity.tokens]


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
    metric = space.objectives[0].metric
    if "promote" in fidelity.model_fields_set and fidelity.promote == "predicted" \
            and metric not in PREDICTABLE:
        raise SpaceError(f"{path}: fidelity.promote: 'predicted' ranks by predicted FVU, so the "
                         f"first objective must be one of {list(PREDICTABLE)} (it is {metric!r});"
                         " use promote: measured")
    if space.sampler.type == "grid":
        raise SpaceError(f"{path}: fidelity: the grid sampler trains every point once; use "
                         "another sampler with rungs")
    for where in ("training", "params"):
        if "max_train_tokens" in getattr(space, where):
            raise SpaceError(f"{path}: {where}.max_train_tokens: fidelity.tokens sets each "
                             "rung's training tokens; leave max_train_tokens out")
    choices = activation_choices(space)
    for name in fidelity.group_by:
        spec = space.params[name]
        missing = [a for a in choices if name != "activation" and not applies(name, spec, a)]
        if missing:
            raise SpaceError(f"{path}: fidelity.group_by: params.{name} does not apply to "
                             f"activation(s) {missing}, so their trials would have no group; "
                             f"group by a parameter every trial of the space samples")
    if check_data and not space.data.synthetic_pending():
        full = loaded.planned_tokens()  # synthetic data not yet generated: checked once it is
        if fidelity.tokens[-1] > full:
            raise SpaceError(f"{path}: fidelity.tokens: the last rung ({fidelity.tokens[-1]}) "
                             f"is more than a trial trains in full ({full} tokens: "
                             "training.epochs over the store's training split); raise epochs or "
                             "lower the rung")
    rung_plan(loaded, path)  # a budget too small for one full trial is refused here


def check_budget(path: Path, loaded: LoadedSpace, check_data: bool) -> None:
    """A token budget smaller than one trial of a space without rungs is refused (one with
    rungs: by its plan); nothing is written. Needs the data: checked once synthetic data is."""
    space = loaded.space
    tokens, compute = space.budget.tokens, space.budget.compute
    if space.fidelity is not None or not check_data or space.data.synthetic_pending():
        return
    if compute is not None and compute < trial_compute(loaded):
        raise SpaceError(f"{path}: budget.compute: {compute:g} tokens x latents is less than the "
                         f"widest trial costs ({trial_compute(loaded):g}: its tokens x "
                         f"{latent_counts(loaded)[1]} latents); raise budget.compute")
    if tokens is None:
        return
    price = loaded.planned_tokens()
    if tokens < price:
        raise SpaceError(f"{path}: budget.tokens: {tokens:g} tokens is less than one trial "
                         f"trains ({price} tokens: training.epochs over the store's training "
                         "split, whole batches); raise budget.tokens, or lower epochs or "
                         "max_train_tokens")
