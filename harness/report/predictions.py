"""Predicted full-budget FVU for every (n_latents, k) cell of a study, trained there or not, and
the promoted trials' predictions against what they then measured (harness.sweep.prediction's
scaling law, fitted here on every complete trial of the study, all rungs)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.report.data import complete
from harness.sweep.prediction import Observation, ScalingModel

PREDICTED_COLUMNS = ("predicted_fvu", "predicted_low", "predicted_high")
"""A promoted trial's prediction at promotion (the rungs' `predicted_fvu` attribute)."""


def observations_of(df: pd.DataFrame) -> list[Observation]:
    """The complete trials of a report's DataFrame (all rungs) as the model's observations."""
    done = df[df["state"] == "complete"].dropna(subset=["final_fvu", "tokens_seen",
                                                        "n_latents", "k"])
    scale = (done["param_lr_scale"].fillna(1.0) if "param_lr_scale" in done
             else pd.Series(1.0, index=done.index))
    return [Observation(float(r.tokens_seen), float(r.n_latents), float(r.k), float(s),
                        float(r.final_fvu))
            for r, s in zip(done.itertuples(), scale, strict=True) if r.final_fvu > 0]


def space_cells(space: dict | None) -> tuple[list[float], list[int]] | None:
    """The expansions and k values a study's recorded space (its `space` attribute) can choose:
    categorical or fixed; None otherwise."""
    params = (space or {}).get("params") or {}

    def values(spec: object) -> list | None:
        if isinstance(spec, dict):
            return list(spec.get("choices") or []) or None
        return [spec] if isinstance(spec, int | float) else None

    expansions, ks = values(params.get("expansion")), values(params.get("k"))
    return (expansions, ks) if expansions and ks else None


def cell_predictions(df: pd.DataFrame, cells: tuple[list[float], list[int]] | None = None
                     ) -> pd.DataFrame | None:
    """One row per (n_latents, k) of `cells` (the space's: space_cells) and of the trials:
    the predicted full-budget FVU at the model's best lr_scale and its 90% interval, the best
    measured on the full budget (NaN where no full-budget trial trained the cell) and whether
    the interval holds it. None without complete trials of a TopK-like shape."""
    obs = observations_of(df)
    full = complete(df).dropna(subset=["final_fvu", "n_latents", "k", "tokens_seen"])
    if not obs or full.empty:
        return None
    model = ScalingModel(obs)
    tokens = float(full["tokens_seen"].median())
    scale = model.best_lr_scale(*_sampled_scales(df))
    rows = []
    latents = sorted(df["n_latents"].dropna().unique())
    ks = sorted(df["k"].dropna().unique())
    if cells is not None:  # the space's cells, trained or not
        d = float((full["n_latents"] / full["expansion"]).median())
        latents = sorted({round(float(e) * d) for e in cells[0]} | set(latents))
        ks = sorted({int(k) for k in cells[1]} | set(ks))
    for n in latents:
        for k in ks:
            if k >= n:
                continue
            p = model.predict(tokens, n, k, scale)
            there = full[(full["n_latents"] == n) & (full["k"] == k)]["final_fvu"]
            best = float(there.min()) if len(there) else np.nan
            rows.append({"n_latents": int(n), "k": int(k), "lr_scale": scale,
                         "predicted_fvu": p.fvu, "low": p.low, "high": p.high,
                         "trained": bool(len(there)), "measured_fvu": best,
                         "covered": p.covers(best) if len(there) else None})
    return pd.DataFrame(rows)


def _sampled_scales(df: pd.DataFrame) -> tuple[float, float]:
    if "param_lr_scale" not in df or df["param_lr_scale"].isna().all():
        return 1.0, 1.0
    return float(df["param_lr_scale"].min()), float(df["param_lr_scale"].max())


def promoted(df: pd.DataFrame) -> pd.DataFrame:
    """Complete trials that were promoted on a prediction, with it and whether it held."""
    if "predicted_fvu" not in df:
        return df.iloc[0:0]
    done = complete(df).dropna(subset=["predicted_fvu", "final_fvu"]).copy()
    done["covered"] = (done["predicted_low"] <= done["final_fvu"]) & (
        done["final_fvu"] <= done["predicted_high"])
    return done


def coverage(rows: pd.DataFrame) -> float | None:
    """The share of rows whose interval holds the measured value (None without any)."""
    held = rows["covered"].dropna()
    return float(held.astype(bool).mean()) if len(held) else None


def plot_predictions(rows: pd.DataFrame, out: Path) -> list[Path]:
    """Predicted (with its 90% interval) against measured FVU of the promoted trials."""
    from harness.report.plots import STYLE, _save

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.4, 3.0), layout="constrained")
        err = np.vstack([rows["predicted_fvu"] - rows["predicted_low"],
                         rows["predicted_high"] - rows["predicted_fvu"]])
        ax.errorbar(rows["final_fvu"], rows["predicted_fvu"], yerr=err, fmt="o", ms=3,
                    lw=0.8, capsize=2, color="C0", label="promoted trial (90% interval)")
        lo = float(min(rows["final_fvu"].min(), rows["predicted_low"].min()))
        hi = float(max(rows["final_fvu"].max(), rows["predicted_high"].max()))
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.7, ls="--", label="predicted = measured")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured full-budget FVU")
        ax.set_ylabel("predicted at promotion")
        ax.legend(fontsize="small")
        return _save(fig, out, "predictions")
