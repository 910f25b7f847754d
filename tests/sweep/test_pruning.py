"""Pruning rules behind one protocol."""

from __future__ import annotations

import optuna
import pytest

from harness.core.training import EvalResult, StopTraining
from harness.sweep.optuna_private import trial_id
from harness.sweep.pruning import (
    DeadFeaturesRule,
    OptunaPrunerRule,
    PruningCallback,
    R2FloorRule,
    rules_for,
)
from harness.sweep.space import Objective, PrunerSection


def result(step: int, r2: float = 0.5, dead_ratio: float = 0.0) -> EvalResult:
    return EvalResult(step=step, epoch=0, tokens=step * 100, loss=1.0, r2=r2, fvu=1 - r2,
                      mse=0.1, l0=4.0, dead_features=int(dead_ratio * 100),
                      dead_ratio=dead_ratio, lr=1e-3, elapsed_s=0.1)


def test_rules_fire_only_after_their_warmup():
    dead = DeadFeaturesRule(max_ratio=0.5, warmup_steps=10)
    assert dead.check(result(5, dead_ratio=0.9)) is None
    assert dead.check(result(10, dead_ratio=0.9)) == {"dead_ratio": 0.9, "max_ratio": 0.5}
    floor = R2FloorRule(min_r2=0.2, warmup_steps=0)
    assert floor.check(result(1, r2=0.3)) is None
    assert floor.check(result(1, r2=float("nan"))) is not None  # NaN is below every floor


def test_the_callback_stops_on_the_first_rule_and_keeps_the_event():
    cb = PruningCallback([R2FloorRule(min_r2=0.2), DeadFeaturesRule(max_ratio=0.5)])
    cb(result(3, r2=0.3))
    assert cb.event is None
    with pytest.raises(StopTraining, match=r"r2_floor at step 4 \(400 tokens\): r2=0.1"):
        cb(result(4, r2=0.1, dead_ratio=0.9))
    assert cb.event is not None and cb.event.rule == "r2_floor" and cb.event.tokens == 400


def test_nothing_prunes_once_less_than_a_quarter_of_the_steps_remains():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    optuna_rule = OptunaPrunerRule(trial, "r2", "threshold")
    cb = PruningCallback([R2FloorRule(min_r2=0.2), optuna_rule], planned_steps=100,
                         min_remaining=PrunerSection(type="none").min_remaining)
    cb(result(80, r2=0.1))  # 20% of the steps remain: the floor is not enforced ...
    assert cb.event is None
    assert trial.storage.get_trial(trial_id(trial)).intermediate_values == {80: 0.1}  # ... reported
    with pytest.raises(StopTraining, match="r2_floor at step 75"):
        cb(result(75, r2=0.1))  # exactly a quarter remains: still prunable
    late = PruningCallback([R2FloorRule(min_r2=0.2)], planned_steps=100, min_remaining=0.0)
    with pytest.raises(StopTraining):
        late(result(99, r2=0.1))


def test_rules_for_a_space_reports_to_optuna_only_with_one_objective():
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    pruner = PrunerSection(type="median", dead_features={"max_ratio": 0.5},
                           r2_floor={"min_r2": 0.0})
    one = rules_for(trial, pruner, [Objective(metric="r2", direction="maximize")])
    assert [r.name for r in one] == ["dead_features", "r2_floor", "median"]
    assert isinstance(one[-1], OptunaPrunerRule)
    one[-1].check(result(2, r2=0.4))
    assert trial.storage.get_trial(trial_id(trial)).intermediate_values == {2: 0.4}
    two = rules_for(trial, pruner, [Objective(metric="r2", direction="maximize"),
                                    Objective(metric="l0", direction="minimize")])
    assert [r.name for r in two] == ["dead_features", "r2_floor"]
    by_size = rules_for(trial, PrunerSection(type="none"),
                        [Objective(metric="n_latents", direction="minimize")])
    assert by_size == []  # not a held-out metric: nothing to report
