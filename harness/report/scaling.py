"""Scaling-law fits of reconstruction error against SAE size, after Gao et al. 2024.

- At fixed k: FVU(n) = c * n^b, a straight line in log-log space fitted by least squares; the
  95% interval of the exponent b uses Student's t with (points - 2) degrees of freedom.
- Jointly, when a study varies both n and k, the paper's form
      L(n, k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n) + exp(zeta + eta log k)
  (a power law in n and k with an interaction, plus a k-dependent irreducible term), fitted in
  log space with scipy's curve_fit; intervals from the fit's covariance and Student's t.
Each fit is made on the best trial of every (n_latents, k): the scaling law is about the
optimum at each size, not about badly tuned runs.

A fit is *unreliable* when a fitted value's 95% interval is wider than the value itself (its sign
is not even settled) or it has fewer points than twice its parameters; `unreliable` says why and
`advice` which sweep would settle it. Reports show both beside the fit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

JOINT_PARAMS = ("alpha", "beta_k", "beta_n", "gamma", "zeta", "eta")
# what a sweep needs for a settled fit: sizes spanning a wide range, several k for the joint law
MIN_SIZES, MIN_SPAN = 5, 16
MIN_JOINT_K, MIN_JOINT_N = 3, 4


def _wide(name: str, value: float, lo: float, hi: float) -> str | None:
    if hi - lo > abs(value):
        return f"{name} = {value:.3g} has a 95% interval [{lo:.3g}, {hi:.3g}] wider than itself"
    return None


@dataclass(frozen=True)
class PowerLawFit:
    """FVU = coefficient * n_latents ** exponent at one k."""

    k: int | None
    """The k these points share (None when fitted without grouping)."""
    coefficient: float
    """c in c * n^b."""
    exponent: float
    """b in c * n^b (negative when FVU falls with n)."""
    exponent_ci: tuple[float, float]
    """95% confidence interval of the exponent."""
    n_points: int
    """Distinct n_latents values fitted."""
    r2_log: float
    """R² of the straight-line fit in log-log space."""
    n_span: float = 1.0
    """Largest n_latents over the smallest."""

    def predict(self, n: np.ndarray) -> np.ndarray:
        return self.coefficient * np.asarray(n, float) ** self.exponent

    @property
    def unreliable(self) -> str | None:
        """Why this fit means little, or None when it is settled."""
        wide = _wide("the exponent", self.exponent, *self.exponent_ci)
        reasons = [wide] if wide else []
        if self.n_points < 2 * 2:
            reasons.append(f"{self.n_points} points for 2 parameters")
        return "; ".join(reasons) or None

    @property
    def advice(self) -> str:
        """The sweep that would settle it."""
        at = f" at k={self.k}" if self.k is not None else ""
        return (f"train {MIN_SIZES}+ n_latents spanning {MIN_SPAN}x or more{at} (this study: "
                f"{self.n_points} spanning {self.n_span:.0f}x), each with enough lr trials that "
                "its best is near the optimum")


@dataclass(frozen=True)
class JointFit:
    """Gao et al.'s L(n, k) fitted to a study that varies both n_latents and k."""

    params: dict[str, tuple[float, float, float]]
    """name -> (value, 95% CI low, 95% CI high) for alpha, beta_k, beta_n, gamma, zeta, eta."""
    n_points: int
    rmse_log: float
    """Root mean squared error of log L."""
    n_sizes: int = 0
    """Distinct n_latents fitted."""
    n_ks: int = 0
    """Distinct k fitted."""

    def predict(self, n: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.exp(_joint_log(np.vstack([np.log(n), np.log(k)]),
                                 *(self.params[p][0] for p in JOINT_PARAMS)))

    @property
    def unreliable(self) -> str | None:
        """Why this fit means little, or None when it is settled."""
        reasons = [r for name, (v, lo, hi) in self.params.items() if (r := _wide(name, v, lo, hi))]
        if self.n_points < 2 * len(JOINT_PARAMS):
            reasons.append(f"{self.n_points} points for {len(JOINT_PARAMS)} parameters")
        return "; ".join(reasons) or None

    @property
    def advice(self) -> str:
        """The sweep that would settle it."""
        return (f"train every combination of {MIN_JOINT_K}+ k values and {MIN_JOINT_N}+ "
                f"n_latents spanning {MIN_SPAN}x ({MIN_JOINT_K * MIN_JOINT_N}+ sizes; this study:"
                f" {self.n_ks} k x {self.n_sizes} n_latents, {self.n_points} sizes), each with "
                "enough lr trials that its best is near the optimum")


def fit_power_law(n: np.ndarray, fvu: np.ndarray, k: int | None = None,
                  confidence: float = 0.95) -> PowerLawFit:
    """Least-squares line through (log n, log fvu); needs 3 or more distinct n."""
    n, fvu = np.asarray(n, float), np.asarray(fvu, float)
    keep = (n > 0) & (fvu > 0) & np.isfinite(fvu)
    x, y = np.log(n[keep]), np.log(fvu[keep])
    if len(np.unique(x)) < 3:
        raise ValueError(f"a power-law fit needs at least 3 distinct n_latents, got "
                         f"{len(np.unique(x))}")
    slope, intercept, r, _, stderr = stats.linregress(x, y)
    t = stats.t.ppf(0.5 + confidence / 2, len(x) - 2)
    return PowerLawFit(k=k, coefficient=float(np.exp(intercept)), exponent=float(slope),
                       exponent_ci=(float(slope - t * stderr), float(slope + t * stderr)),
                       n_points=len(x), r2_log=float(r**2),
                       n_span=float(np.exp(x.max() - x.min())))


def fit_per_k(best: pd.DataFrame) -> list[PowerLawFit]:
    """A power law per k with at least 3 distinct n_latents, from best-per-(n, k) rows."""
    fits = []
    for k, group in best.groupby("k"):
        if group["n_latents"].nunique() >= 3:
            fits.append(fit_power_law(group["n_latents"], group["final_fvu"], k=int(k)))
    return fits


def _joint_log(xk: np.ndarray, alpha: float, beta_k: float, beta_n: float, gamma: float,
               zeta: float, eta: float) -> np.ndarray:
    log_n, log_k = xk
    first = alpha + beta_k * log_k + beta_n * log_n + gamma * log_k * log_n
    return np.logaddexp(first, zeta + eta * log_k)


def fit_joint(best: pd.DataFrame, confidence: float = 0.95) -> JointFit | None:
    """The joint L(n, k) fit; None when the study does not vary both enough (needs 2+ values
    of each, and more points than the 6 parameters) or the fit does not converge."""
    data = best.dropna(subset=["final_fvu"])
    data = data[data["final_fvu"] > 0]
    if data["k"].nunique() < 2 or data["n_latents"].nunique() < 2 or len(data) <= 6:
        return None
    log_n = np.log(data["n_latents"].to_numpy(float))
    log_k = np.log(data["k"].to_numpy(float))
    y = np.log(data["final_fvu"].to_numpy(float))
    slope, intercept = np.polyfit(log_n, y, 1)
    start = [intercept, 0.0, slope, 0.0, float(y.min()) - 2.0, 0.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", optimize.OptimizeWarning)
            values, cov = optimize.curve_fit(_joint_log, np.vstack([log_n, log_k]), y, p0=start,
                                             maxfev=20000)
    except (RuntimeError, optimize.OptimizeWarning, ValueError):
        return None
    if not np.all(np.isfinite(cov)):
        return None
    t = stats.t.ppf(0.5 + confidence / 2, len(y) - len(JOINT_PARAMS))
    se = np.sqrt(np.diag(cov))
    params = {name: (float(v), float(v - t * s), float(v + t * s))
              for name, v, s in zip(JOINT_PARAMS, values, se, strict=True)}
    resid = y - _joint_log(np.vstack([log_n, log_k]), *values)
    return JointFit(params=params, n_points=len(y), rmse_log=float(np.sqrt(np.mean(resid**2))),
                    n_sizes=int(data["n_latents"].nunique()), n_ks=int(data["k"].nunique()))
