"""The scaling law behind promotion: it recovers a planted power law with honest intervals, and
the rungs promote by its prediction where the raw first rung ranks widths in reverse."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import optuna
import pytest
from spaces import tiny_space, write_space

from harness.sweep.prediction import FEATURES, Observation, ScalingModel, features
from harness.sweep.rungs import PREDICTED_ATTR, RungScheduler
from harness.sweep.space import load_space
from harness.sweep.space.rungs import FIDELITY_ATTR, Rung

PLANTED = np.array([math.log(0.08), -0.35, -0.12, -0.2, -0.09, 0.02, 0.05, 0.3])


def _planted(rng: np.random.Generator, n: int, noise: float) -> list[Observation]:
    out = []
    for _ in range(n):
        tokens = float(rng.choice([16_384, 65_536, 262_144]))
        latents = float(rng.choice([768, 1536, 3072, 6144]))
        k = float(rng.choice([8, 16, 32, 64]))
        scale = float(np.exp(rng.uniform(-1, 1)))
        y = features(tokens, latents, k, scale) @ PLANTED + rng.normal(0, noise)
        out.append(Observation(tokens, latents, k, scale, math.exp(y)))
    return out


def test_the_model_recovers_a_planted_power_law_and_its_intervals_cover():
    rng = np.random.default_rng(0)
    model = ScalingModel(_planted(rng, 120, 0.02))
    for name, want, got in zip(FEATURES, PLANTED, model.mean, strict=True):
        assert got == pytest.approx(want, abs=0.03), name
    assert model.noise == pytest.approx(0.02, rel=0.3)
    fresh = _planted(rng, 400, 0.02)
    covered = np.mean([model.predict(o.tokens, o.n_latents, o.k, o.lr_scale).covers(o.fvu)
                       for o in fresh])
    assert 0.82 <= covered <= 0.97  # a 90% interval
    assert model.best_lr_scale() == pytest.approx(math.exp(-0.05 / 0.6), rel=0.1)


def test_without_trials_the_prior_predicts_with_a_wide_interval():
    p = ScalingModel([]).predict(262_144, 4096, 32)
    assert p.low < p.fvu < p.high and p.high / p.low > 100


# the rungs of the test: 2 configurations per k at 2,560 tokens, the better one re-run at 11,400
RUNGS = {"tokens": [2560, 11_400], "reduction": 2, "group_by": ["k"]}


def _study_with_reversed_first_rung(synthetic_store, tmp_path, promote):
    params = {"expansion": {"type": "categorical", "choices": [2, 8]},
              "k": {"type": "categorical", "choices": [2, 4]}}
    space = tiny_space(synthetic_store, tmp_path / "results", params=params,
                       fidelity={**RUNGS, "promote": promote}, wandb={"mode": "off"},
                       budget={"n_trials": 6})
    loaded = load_space(write_space(tmp_path / "s.yaml", space))
    study = optuna.create_study(directions=["maximize"])
    dists = {"expansion": optuna.distributions.CategoricalDistribution([2, 8]),
             "k": optuna.distributions.CategoricalDistribution([2, 4])}
    # a planted law: on the first rung the narrow SAE is ahead, on the full budget the wide one
    fvu = {(2, 2560): 0.30, (8, 2560): 0.31, (2, 11_332): 0.20, (8, 11_332): 0.15}
    rows = [(2, 2, 0, 2560), (2, 8, 0, 2560), (2, 2, 1, 11_332), (2, 8, 1, 11_332),
            (4, 2, 0, 2560), (4, 8, 0, 2560)]
    for k, expansion, rung, tokens in rows:
        value = fvu[expansion, tokens] * (0.8 if k == 4 else 1.0)
        study.add_trial(optuna.trial.create_trial(
            params={"expansion": expansion, "k": k}, distributions=dists, values=[1 - value],
            user_attrs={FIDELITY_ATTR: asdict(Rung(rung=rung, tokens=rung and 11_400 or 2560)),
                        "n_latents": 16 * expansion, "k": k, "final_fvu": value,
                        "tokens_seen": tokens}))
    return loaded, study


@pytest.mark.parametrize(("promote", "width"), [("predicted", 8), ("measured", 2)])
def test_promotion_by_prediction_picks_the_width_that_wins_on_the_full_budget(
        synthetic_store, tmp_path, promote, width):
    loaded, study = _study_with_reversed_first_rung(synthetic_store, tmp_path, promote)
    RungScheduler(loaded).enqueue(study, want=0, fresh_allowed=False)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].system_attrs["fixed_params"] == {"expansion": width, "k": 4}
    recorded = waiting[0].user_attrs.get(PREDICTED_ATTR)
    if promote == "predicted":
        assert recorded["low"] < recorded["fvu"] < recorded["high"]
        assert recorded["fvu"] == pytest.approx(0.15 * 0.8, rel=0.25)
    else:
        assert recorded is None


def test_a_compute_budget_caps_the_width_of_the_last_fresh_configurations(synthetic_store,
                                                                         tmp_path):
    """Plan: 2 k x (2 at 2,560 tokens + 1 at 11,332); priced at the mean width (16 x 5 latents)
    fresh and the widest (128) promoted. Once three wide fresh trials have run, the fourth must
    be narrow for both promotions to fit."""
    params = {"expansion": {"type": "categorical", "choices": [2, 8]},
              "k": {"type": "categorical", "choices": [2, 4]}}
    plan = 2 * (2 * 2560 * 80 + 11_332 * 128)
    space = tiny_space(synthetic_store, tmp_path / "results", params=params, fidelity=RUNGS,
                       wandb={"mode": "off"}, budget={"n_trials": 6, "compute": plan})
    loaded = load_space(write_space(tmp_path / "s.yaml", space))
    scheduler = RungScheduler(loaded)
    study = optuna.create_study(directions=["maximize"])
    assert scheduler.enqueue(study, want=3) == 3
    for i in range(3):  # each of the first three samples the wide SAE (the sampler's choice);
        trial = study.ask({"expansion": optuna.distributions.CategoricalDistribution([2, 8])})
        trial.set_user_attr("n_latents", 128)
        if i < 2:  # the third still running: no group has finished its rung, none is promoted
            trial.set_user_attr("tokens_seen", 2560)
            study.tell(trial, [0.5])
    assert scheduler.enqueue(study, want=1) == 1
    (last,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert last.system_attrs["fixed_params"]["expansion"] == 2
    # without the budget the sampler keeps the choice
    space["budget"] = {"n_trials": 6}
    free = RungScheduler(load_space(write_space(tmp_path / "f.yaml", space)))
    assert free._affordable({}, 3) == {}
