"""Token-budget rungs: successive halving that re-runs configurations (a space's `fidelity:`).

A fresh configuration trains at the first rung's token budget. Once every configuration of a
rung in one group (`group_by`, e.g. each k) has finished, the best 1/`reduction` of them by the
first objective are re-run from the start at the next rung's budget.

Re-run, not continued: a run's learning rate warms up and decays over its planned steps, its
last steps are weight-averaged and its decoder is refit by least squares at its end, so a run
stopped at a lower budget is not a prefix of one planned for a higher budget. A rung's trial is
therefore the same training as a standalone trial at that budget, with the seed of its
configuration's first trial. Optuna's SuccessiveHalvingPruner and HyperbandPruner stop a trial
part-way (continuation), so they do not fit here; the rungs are enqueued as Optuna trials
(`enqueue_trial`) and sampled by the study's sampler.

The plan is fixed by the budget: n0 configurations per group at rung 0 and
n0 // reduction**r at rung r, with n0 the largest that fits `budget.n_trials` and
`budget.tokens`.

Each group's first fresh configuration is the default recipe at the widest expansion
(`rule_point`); the sampler chooses the others. Under a compute budget the plan prices fresh
configurations at the space's mean width, so a fresh configuration whose widest choice would no
longer leave room for the plan's promotions is enqueued at the widest expansion that does.

Promotion ranks a rung's configurations by the FVU a scaling law fitted to every finished trial
of the study predicts for them on the last rung (`fidelity.promote: predicted`, the default,
harness.sweep.prediction): an eighth of the tokens ranks widths in reverse of the full budget,
so the raw first-rung value promotes narrow SAEs (docs/search-efficiency.md). Each promoted
trial records the prediction it was promoted on (PREDICTED_ATTR), for the report's plot of
predicted against measured.
"""

from __future__ import annotations

from dataclasses import asdict

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.sweep.budget import own_trials, si, superseded_numbers
from harness.sweep.optuna_private import params_with_fixed
from harness.sweep.prediction import (
    PREDICTABLE,
    Prediction,
    ScalingModel,
    observations,
    trial_shape,
)
from harness.sweep.space import LoadedSpace
from harness.sweep.space.rungs import FIDELITY_ATTR, Rung, rung_of, rung_plan
from harness.sweep.space.schema import ParamSpec


class RungScheduler:
    """Enqueues a fidelity study's next trials: due promotions first, then fresh ones."""

    def __init__(self, loaded: LoadedSpace) -> None:
        space = loaded.space
        assert space.fidelity is not None
        self.fidelity = space.fidelity
        self.plan = rung_plan(loaded)
        self.groups = self.plan.groups
        self.maximize = space.objectives[0].direction == "maximize"
        self.predicted = promotes_by_prediction(loaded)
        self.compute = space.budget.compute
        self.d = loaded.d or 1
        spec = space.params.get("expansion")
        self.widths = (list(spec.choices or [])
                       if isinstance(spec, ParamSpec) and spec.type == "categorical" else [])
        """The expansions a compute budget may cap a fresh configuration to (categorical)."""
        self.rule_point = rule_point(loaded)

    def planned_trials(self) -> int:
        return self.plan.trials

    def _group(self, t: FrozenTrial) -> int:
        params = params_with_fixed(t)
        for i, group in enumerate(self.groups):
            if all(n in params and params[n] == v for n, v in group.items()):
                return i
        return -1

    def enqueue(self, study: optuna.Study, want: int, fresh_allowed: bool = True) -> int:
        """Enqueue up to `want` trials (promotions need no room: they are the plan's); returns
        how many were enqueued. Call it under the study's budget lock."""
        trials = own_trials(study)
        superseded = superseded_numbers(trials)
        by_cell: dict[tuple[int, int], list[FrozenTrial]] = {}
        for t in trials:
            rung = rung_of(t)
            if rung is not None and t.number not in superseded:
                by_cell.setdefault((rung.rung, self._group(t)), []).append(t)
        added = self._promote(study, by_cell)
        start = self.plan.start
        started = sum(len(ts) for (r, _), ts in by_cell.items() if r == start)
        while fresh_allowed and added < want and started < self.plan.fresh:
            group = {**self.groups[started % len(self.groups)],
                     **(self.rule_point if started < len(self.groups) else {}),
                     **self._affordable(by_cell, self.plan.fresh - started - 1)}
            study.enqueue_trial(group, user_attrs={FIDELITY_ATTR: asdict(
                Rung(rung=start, tokens=self.fidelity.tokens[start]))})
            started += 1
            added += 1
        return added

    def _affordable(self, by_cell: dict[tuple[int, int], list[FrozenTrial]],
                    after: int) -> dict:
        """Under a compute budget, the widest expansion a fresh configuration may take: what
        is left once the trials finished (what they trained), running or waiting (their rung,
        at their width or else the widest), the plan's promotions not yet enqueued (at the
        widest) and the `after` fresh ones still to come (at the narrowest) are counted. Empty
        (the sampler chooses) while the widest fits, or without a compute budget or a
        categorical expansion."""
        limit, widths = self.compute, self.widths
        if limit is None or not widths:
            return {}
        prices, start, d = self.plan.prices, self.plan.start, self.d
        widest, narrowest = max(widths), min(widths)
        held = 0.0
        for ts in by_cell.values():
            for t in ts:
                rung = rung_of(t)
                assert rung is not None
                if t.state.is_finished():
                    held += float(t.user_attrs.get("tokens_seen") or 0) * self._latents(t)
                else:
                    held += prices[rung.rung] * (self._latents(t) or widest * d)
        promoted = sum(len(ts) for (r, _), ts in by_cell.items() if r > start)
        due = len(self.groups) * sum(self.plan.sizes[start + 1:]) - promoted
        left = (limit - held - due * prices[-1] * d * widest
                - after * prices[start] * d * narrowest)
        fits = [w for w in widths if prices[start] * d * w <= left]
        if fits and max(fits) == widest:
            return {}
        return {"expansion": max(fits) if fits else narrowest}

    def _latents(self, t: FrozenTrial) -> float:
        """A trial's latents as recorded, else from its (fixed) expansion; 0 when unknown."""
        n = t.user_attrs.get("n_latents")
        if n:
            return float(n)
        return float(params_with_fixed(t).get("expansion", 0)) * self.d

    def _promote(self, study: optuna.Study,
                 by_cell: dict[tuple[int, int], list[FrozenTrial]]) -> int:
        """Re-run the best of each group's finished rung at the next; a rung above never holds
        more than the plan's size (a plan raised later tops it up with the best not yet
        promoted, and never re-runs one twice)."""
        added = 0
        sizes = self.plan.sizes
        for r in range(self.plan.start, len(sizes) - 1):
            for g in range(len(self.groups)):
                cell = by_cell.get((r, g), [])
                if len(cell) < sizes[r] or not all(t.state.is_finished() for t in cell):
                    continue
                above = by_cell.get((r + 1, g), [])
                room = sizes[r + 1] - len(above)
                promoted = {rung.promoted_from for t in above
                            if (rung := rung_of(t)) is not None}
                done = [t for t in cell if t.state == TrialState.COMPLETE and t.values
                        and t.number not in promoted]
                if not done or room <= 0:
                    continue
                predictions = self._predictions(study, done)
                if predictions:
                    done.sort(key=lambda t: predictions[t.number].fvu)
                else:
                    done.sort(key=lambda t: t.values[0], reverse=self.maximize)
                for t in done[:room]:
                    below = rung_of(t)
                    assert below is not None
                    rung = Rung(rung=r + 1, tokens=self.fidelity.tokens[r + 1],
                                root=below.root if below.root is not None else t.number,
                                promoted_from=t.number)
                    attrs: dict = {FIDELITY_ATTR: asdict(rung)}
                    if predictions:
                        attrs[PREDICTED_ATTR] = asdict(predictions[t.number])
                    study.enqueue_trial(t.params, user_attrs=attrs)
                    added += 1
        return added

    def _predictions(self, study: optuna.Study,
                     trials: list[FrozenTrial]) -> dict[int, Prediction]:
        """Each trial's predicted FVU on the last rung (empty when promotion is by measured
        value, or a trial lacks its shape)."""
        if not self.predicted:
            return {}
        model = ScalingModel(observations(own_trials(study)))
        last = self.plan.prices[-1]
        out = {}
        for t in trials:
            shape = trial_shape(t)
            if shape is None:
                return {}
            out[t.number] = model.predict(last, *shape)
        return out


PREDICTED_ATTR = "predicted_fvu"
"""The user attribute of a promoted trial: the Prediction (fvu, low, high) it was promoted on."""


def rule_point(loaded: LoadedSpace) -> dict:
    """The parameters of the default recipe at the space's widest expansion: `lr_scale` 1 (when
    the space samples it and 1 is in its range) and the largest expansion (when categorical).
    Each group's first fresh configuration starts there: the scaling laws put a k's best at the
    widest SAE, and the rule is fitted to be within a few percent of a grid's best rate
    (docs/search-efficiency.md), so the search starts from what a researcher would try first."""
    params = loaded.space.params
    point: dict = {}
    expansion = params.get("expansion")
    if isinstance(expansion, ParamSpec) and expansion.type == "categorical" \
            and expansion.choices:
        point["expansion"] = max(expansion.choices)
    scale = params.get("lr_scale")
    if isinstance(scale, ParamSpec) and scale.type == "float" and scale.low is not None \
            and scale.high is not None and scale.low <= 1.0 <= scale.high:
        point["lr_scale"] = 1.0
    return point


def promotes_by_prediction(loaded: LoadedSpace) -> bool:
    """Whether the rungs rank by predicted FVU: `fidelity.promote` is "predicted" and the first
    objective is fvu or r2 (checked by the space: only a default falls back to measured)."""
    fidelity = loaded.space.fidelity
    return (fidelity is not None and fidelity.promote == "predicted"
            and loaded.space.objectives[0].metric in PREDICTABLE)


def trial_total(loaded: LoadedSpace) -> int:
    """The trials a study runs in all: its rungs' plan, else budget.n_trials."""
    if loaded.space.fidelity is None:
        return loaded.space.budget.n_trials
    return rung_plan(loaded).trials


def plan_line(loaded: LoadedSpace) -> str:
    """The study's trials for the start line: "24 trials (16 at 17.4k tokens, 8 at 137k)"."""
    if loaded.space.fidelity is None:
        return f"{loaded.space.budget.n_trials} trials"
    plan = rung_plan(loaded)
    counts = [plan.fresh if r == plan.start else len(plan.groups) * n
              for r, n in enumerate(plan.sizes)]
    parts = [f"{n} at {si(t)}" for n, t in zip(counts, plan.prices, strict=True) if n]
    return f"{plan.trials} trials ({', '.join(parts)} tokens)"
