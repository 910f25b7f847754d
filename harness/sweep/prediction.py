"""What a configuration would reach on the full budget: a scaling law fitted to a study's trials.

The model is Bayesian linear regression of log FVU on

    1, log T, log n, log k, log n * log T, log k * log T, u, u^2

with T the training tokens, n the latents, k the active latents and u = log lr_scale (the
learning rate over the default rule's). The terms in T are a power law in tokens whose exponent
depends on the width and k (Gao et al. 2024: loss is a power law in latents and tokens); the
u terms are a parabola around the default rule's rate.

Trials at one token budget cannot tell how the widths' ranking changes with tokens, so the
coefficients start from a prior (PRIOR_MEAN, PRIOR_SD: the mean and the spread of the laws that
`scripts/bench_search.py --grids-only` fits, under a flat prior, to the grids of MiniLM layer 3
and SmolLM2 layer 6: docs/search-efficiency.md) and every trial of the study moves them;
full-budget trials pin the terms in T. The intercept's prior is wide: each store has its own
level. Predictions come with a 90% interval from the posterior and the residual noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from harness.sweep.optuna_private import params_with_fixed

FEATURES = ("1", "log T", "log n", "log k", "log n log T", "log k log T", "u", "u^2")
# reference points: the features are logs of ratios to these, so the intercept is log FVU there
REF_TOKENS, REF_LATENTS, REF_K = 262_144, 4096, 32
PRIOR_MEAN = np.array([math.log(0.1), -0.291, -0.111, -0.283, -0.041, -0.029, 0.018, 0.089])
PRIOR_SD = np.array([3.0, 0.053, 0.050, 0.142, 0.020, 0.020, 0.076, 0.030])
NOISE_SD = 0.03
"""The prior's residual sd of log FVU (seeds and data order); replaced by the fit's own once
it has more trials than coefficients."""
PREDICTABLE = ("fvu", "r2")
"""First objectives the model predicts (r2 = 1 - FVU)."""
Z90 = 1.6448536269514722  # the normal's 95th percentile: a two-sided 90% interval


@dataclass(frozen=True)
class Observation:
    """One finished trial: its shape, its tokens and the FVU it reached."""

    tokens: float
    n_latents: float
    k: float
    lr_scale: float
    fvu: float


@dataclass(frozen=True)
class Prediction:
    """A predicted FVU and its 90% interval."""

    fvu: float
    low: float
    high: float

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def features(tokens: float, n_latents: float, k: float, lr_scale: float) -> np.ndarray:
    t = math.log(tokens / REF_TOKENS)
    n = math.log(n_latents / REF_LATENTS)
    kk = math.log(k / REF_K)
    u = math.log(lr_scale)
    return np.array([1.0, t, n, kk, n * t, kk * t, u, u * u])


class ScalingModel:
    """The posterior of the coefficients given a study's observations."""

    def __init__(self, observations: Iterable[Observation], prior_mean: np.ndarray = PRIOR_MEAN,
                 prior_sd: np.ndarray = PRIOR_SD) -> None:
        obs = [o for o in observations if o.fvu > 0 and math.isfinite(o.fvu)]
        self.n_obs = len(obs)
        prior_precision = np.diag(1.0 / np.asarray(prior_sd, dtype=float) ** 2)
        x = np.array([features(o.tokens, o.n_latents, o.k, o.lr_scale) for o in obs]
                     ).reshape(-1, len(FEATURES))
        y = np.log([o.fvu for o in obs])
        noise = NOISE_SD
        for _ in range(2):  # the noise from the residuals of the fit it gives, once
            precision = prior_precision + x.T @ x / noise ** 2
            self.cov = np.linalg.inv(precision)
            self.mean = self.cov @ (prior_precision @ prior_mean + x.T @ y / noise ** 2)
            if self.n_obs <= len(FEATURES):
                break
            resid = y - x @ self.mean
            noise = max(NOISE_SD / 3, float(np.sqrt(resid @ resid / (self.n_obs - 1))))
        self.noise = noise

    def predict(self, tokens: float, n_latents: float, k: float,
                lr_scale: float = 1.0) -> Prediction:
        x = features(tokens, n_latents, k, lr_scale)
        mean = float(x @ self.mean)
        sd = math.sqrt(float(x @ self.cov @ x) + self.noise ** 2)
        return Prediction(math.exp(mean), math.exp(mean - Z90 * sd), math.exp(mean + Z90 * sd))

    def best_lr_scale(self, low: float = 0.25, high: float = 4.0) -> float:
        """The lr_scale the fitted parabola puts its minimum at, within [low, high]."""
        a, b = self.mean[7], self.mean[6]
        u = -b / (2 * a) if a > 0 else 0.0
        return float(min(high, max(low, math.exp(u))))

    def coefficients(self) -> dict[str, float]:
        return dict(zip(FEATURES, map(float, self.mean), strict=True))


def trial_shape(t: FrozenTrial) -> tuple[float, float, float] | None:
    """(n_latents, k, lr_scale) of a trial as it recorded them, or None."""
    n, k = t.user_attrs.get("n_latents"), t.user_attrs.get("k")
    if not n or not k:
        return None
    return float(n), float(k), float(params_with_fixed(t).get("lr_scale", 1.0))


def observations(trials: Iterable[FrozenTrial]) -> list[Observation]:
    """The complete trials that recorded their shape, tokens and final FVU."""
    out = []
    for t in trials:
        shape = trial_shape(t)
        fvu, tokens = t.user_attrs.get("final_fvu"), t.user_attrs.get("tokens_seen")
        if t.state != TrialState.COMPLETE or shape is None or fvu is None or not tokens:
            continue
        out.append(Observation(float(tokens), *shape, float(fvu)))
    return out
