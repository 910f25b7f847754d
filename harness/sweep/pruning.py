"""Pruning rules: small objects behind one protocol, applied at every evaluation of a trial.

- dead_features: dead_ratio above `max_ratio` (single- and multi-objective);
- r2_floor: held-out R² below `min_r2` (single- and multi-objective);
- Optuna's pruner on the first objective, reported with `trial.report(value, step)` (single-
  objective only: Optuna does not prune multi-objective trials).

No rule prunes once less than `pruner.min_remaining` (default 0.25) of a trial's planned steps
remain. A new rule is a class here with a `name` and `check`, listed in RULES, plus its section
in the space's `pruner:` block (harness.sweep.space.PrunerSection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import optuna

from harness.core.metrics import METRICS
from harness.core.training.results import EvalResult, StopTraining


class PruneRule(Protocol):
    """Decides at one evaluation whether a trial is hopeless."""

    name: str

    def check(self, r: EvalResult) -> dict[str, float] | None:
        """The values that condemn the trial, or None to let it go on."""


@dataclass(frozen=True)
class DeadFeaturesRule:
    """Prune when more than `max_ratio` of the latents are dead after `warmup_steps`."""

    max_ratio: float
    warmup_steps: int = 0
    name: str = "dead_features"

    def check(self, r: EvalResult) -> dict[str, float] | None:
        if r.step >= self.warmup_steps and r.dead_ratio > self.max_ratio:
            return {"dead_ratio": r.dead_ratio, "max_ratio": self.max_ratio}
        return None


@dataclass(frozen=True)
class R2FloorRule:
    """Prune when held-out R² is below `min_r2` (or not a number) after `warmup_steps`."""

    min_r2: float
    warmup_steps: int = 0
    name: str = "r2_floor"

    def check(self, r: EvalResult) -> dict[str, float] | None:
        if r.step >= self.warmup_steps and not r.r2 >= self.min_r2:
            return {"r2": r.r2, "min_r2": self.min_r2}
        return None


class OptunaPrunerRule:
    """Reports the objective to Optuna at each evaluation and prunes when its pruner says so.
    `value_of` reads a metric that is not in EvalResult (a downstream one) and gives None at
    evaluations where it was not measured."""

    def __init__(self, trial: optuna.Trial, metric: str, pruner_name: str,
                 value_of: Callable[[str, EvalResult], float | None] | None = None) -> None:
        self.trial, self.metric, self.name = trial, metric, pruner_name
        self.value_of = value_of

    def check(self, r: EvalResult) -> dict[str, float] | None:
        value = (getattr(r, self.metric) if self.value_of is None
                 else self.value_of(self.metric, r))
        if value is None:
            return None
        value = float(value)
        self.trial.report(value, r.step)
        return {self.metric: value} if self.trial.should_prune() else None


# the space's pruner sections that are rules of ours, by key
RULES: dict[str, type] = {"dead_features": DeadFeaturesRule, "r2_floor": R2FloorRule}


@dataclass(frozen=True)
class PruneEvent:
    """Which rule stopped a trial, when, and on which values."""

    rule: str
    step: int
    tokens: int
    values: dict[str, float]

    @property
    def reason(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.values.items())
        return f"{self.rule} at step {self.step} ({self.tokens} tokens): {shown}"


def rules_for(trial: optuna.Trial, pruner: Any, objectives: list[Any],
              downstream: Callable[[str, EvalResult], float | None] | None = None
              ) -> list[PruneRule]:
    """The rules of a space's `pruner` section for one trial, ours first. `downstream` reads the
    downstream metrics measured during training (evaluation.downstream.every)."""
    rules: list[PruneRule] = []
    for key, cls in RULES.items():
        section = getattr(pruner, key, None)
        if section is not None:
            rules.append(cls(**section.model_dump()))
    metric = objectives[0].metric
    if len(objectives) == 1 and METRICS[metric].source == "eval":
        # reported even under the "none" pruner: the dashboard draws the intermediate values
        rules.append(OptunaPrunerRule(trial, metric, pruner.type))
    elif len(objectives) == 1 and METRICS[metric].source == "downstream" and downstream:
        rules.append(OptunaPrunerRule(trial, metric, pruner.type, downstream))
    return rules


class PruningCallback:
    """A trainer callback: applies the rules at each evaluation, raises StopTraining on the
    first that fires and keeps the event for the trial's record. Past the point where less than
    `min_remaining` of the `planned_steps` remain, nothing is pruned: stopping then saves too
    little to be worth losing a finished trial (the rules are still asked, so Optuna still
    records the values)."""

    def __init__(self, rules: list[PruneRule], planned_steps: int | None = None,
                 min_remaining: float = 0.0) -> None:
        self.rules = rules
        self.event: PruneEvent | None = None
        self.last_step = (None if not planned_steps or not min_remaining
                          else (1.0 - min_remaining) * planned_steps)
        """The last step at which a rule may prune (None: any)."""

    def __call__(self, r: EvalResult) -> None:
        late = self.last_step is not None and r.step > self.last_step
        for rule in self.rules:
            values = rule.check(r)
            if values is not None and not late:
                self.event = PruneEvent(rule.name, r.step, r.tokens, values)
                raise StopTraining(self.event.reason)
