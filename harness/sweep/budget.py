"""A study's budget: trials, training tokens and trial hours spoken for, read from its storage.

`n_trials` counts every trial of the study except those superseded by a retry; enqueued
(WAITING) trials always run. The token, compute and hour budgets (`budget.tokens`,
`budget.compute`, `budget.hours`) count what the finished trials recorded, and a worker starts no
trial that would take the total past them (harness.sweep.worker). Compute is training tokens x
latents: a step's multiply-adds per token grow with the latents (d is the store's), so an 8x SAE
costs about four times a 2x SAE per token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


@dataclasses.dataclass(frozen=True)
class BudgetState:
    """How much of the study's trial budget is spoken for."""

    used: int
    """Trials that count against n_trials (anything not WAITING and not superseded)."""
    waiting: int
    """Enqueued trials not yet started (retries included): always run."""
    running: int
    """Trials RUNNING now."""
    tokens: int = 0
    """Training tokens of the finished trials (what each recorded: a pruned trial's up to where
    it stopped; a trial that failed before its first evaluation, none)."""
    seconds: float = 0.0
    """Wall seconds of the finished trials."""
    finished: int = 0
    """Finished trials that recorded a wall time (the mean's count)."""
    compute: float = 0.0
    """Training tokens x latents of the finished trials."""

    def after(self, trial: FrozenTrial) -> BudgetState:
        """This state with a finished trial's tokens and wall time added."""
        wall = trial.user_attrs.get("wall_time_s")
        tokens = int(trial.user_attrs.get("tokens_seen") or 0)
        return dataclasses.replace(
            self, tokens=self.tokens + tokens,
            compute=self.compute + tokens * float(trial.user_attrs.get("n_latents") or 0),
            seconds=self.seconds + float(wall or 0.0), finished=self.finished + (wall is not None))

    def tokens_fit(self, limit: float | None, per_trial: int, more: int = 1) -> bool:
        """Whether `more` trials of `per_trial` tokens, beside the running ones, fit in
        `limit` tokens (None: no limit)."""
        return limit is None or self.tokens + (self.running + more) * per_trial <= limit

    def compute_fit(self, limit: float | None, per_trial: float, more: int = 1) -> bool:
        """Whether `more` trials of `per_trial` tokens x latents, beside the running ones (each
        counted at `per_trial`), fit in `limit` (None: no limit)."""
        return limit is None or self.compute + (self.running + more) * per_trial <= limit

    def hours_fit(self, limit: float | None, more: int = 1) -> bool:
        """Whether `more` trials of the finished ones' mean wall time, beside the running ones,
        fit in `limit` trial hours (None: no limit; before any trial finishes: yes)."""
        if limit is None or not self.finished:
            return True
        mean = self.seconds / self.finished
        return self.seconds + (self.running + more) * mean <= limit * 3600

    def describe(self, budget: Any) -> str:
        """What is left of a space's token, compute and hour budgets (its `budget:` section),
        for the progress line ("" if none)."""
        parts = []
        if budget.tokens is not None:
            parts.append(f"tokens {si(self.tokens)} of {si(budget.tokens)}")
        if getattr(budget, "compute", None) is not None:
            parts.append(f"compute {si(self.compute)} of {si(budget.compute)} token-latents")
        if budget.hours is not None:
            parts.append(f"{self.seconds / 3600:.2g} of {budget.hours:g} trial h")
        return ", ".join(parts)


def si(value: float) -> str:
    """A count in k, M or G with 3 significant digits."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def budget_state(study: optuna.Study) -> BudgetState:
    """What the study's own trials have spent (warm-started copies of other studies' trials cost
    this study nothing)."""
    trials = own_trials(study)
    superseded = superseded_numbers(trials)
    used = sum(1 for t in trials if t.state != TrialState.WAITING and t.number not in superseded)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    state = BudgetState(used=used, waiting=waiting, running=running)
    for t in trials:
        if t.state.is_finished():
            state = state.after(t)
    return state


def superseded_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials whose configuration was re-enqueued as another trial."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def warm_started(trial: FrozenTrial) -> bool:
    """Whether `trial` is a copy of another study's trial (harness.sweep.warm_start)."""
    return "warm_start" in trial.user_attrs


def own_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's own trials: not the copies a warm start brought, which cost it nothing and
    are never re-run, promoted or counted."""
    return [t for t in study.get_trials(deepcopy=False) if not warm_started(t)]
