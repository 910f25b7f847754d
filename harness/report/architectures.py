"""Architectures compared at matched sparsity: each activation's Pareto front of held-out FVU (or
ΔCE) against held-out L0 on one figure, and each one's FVU at L0 = 16, 32, 64 and 128, read off
its front by interpolation in log-log (SAEBench's comparison; never extrapolated).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.report.data import complete, pareto_mask
from harness.report.plots import COLUMN, STYLE, _save, l0_axes, palette

MATCHED_L0 = (16, 32, 64, 128)
"""The L0 values the architecture table reads each front at."""


def activations(df: pd.DataFrame) -> list[str]:
    """The activations of the complete trials (TopK for records that predate the column)."""
    if "activation" not in df:
        return ["topk"] if not complete(df).empty else []
    return sorted(complete(df)["activation"].fillna("topk").unique())


def fronts(df: pd.DataFrame, y: str = "final_fvu") -> dict[str, pd.DataFrame]:
    """Each activation's complete trials on its front of minimal L0 and minimal `y`, by L0."""
    done = complete(df).dropna(subset=["final_l0", y])
    done = done[(done["final_l0"] > 0) & (done[y] > 0)]
    names = (done["activation"].fillna("topk") if "activation" in done
             else pd.Series("topk", index=done.index))
    out = {}
    for name in sorted(names.unique()):
        group = done[names == name]
        out[name] = group[pareto_mask(group["final_l0"], group[y])].sort_values("final_l0")
    return out


def at_matched_l0(df: pd.DataFrame, y: str = "final_fvu",
                  l0s: Sequence[float] = MATCHED_L0) -> pd.DataFrame:
    """One row per activation: `y` on its front at each L0 in `l0s` (log-log interpolation
    between the two front points around it; NaN outside the front's L0 range), and how many
    complete trials it had."""
    rows = []
    for name, front in fronts(df, y).items():
        x, v = np.log(front["final_l0"].to_numpy(float)), np.log(front[y].to_numpy(float))
        row: dict[str, object] = {"activation": name, "trials": int(
            (complete(df).get("activation", pd.Series("topk", index=complete(df).index))
             .fillna("topk") == name).sum()), "front": len(front)}
        for l0 in l0s:
            inside = len(x) > 0 and x[0] <= np.log(l0) <= x[-1]
            row[f"{y.removeprefix('final_')}@L0={l0:g}"] = (
                float(np.exp(np.interp(np.log(l0), x, v))) if inside else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_architectures(df: pd.DataFrame, out: Path, y: str = "final_fvu",
                       name: str = "architectures") -> list[Path]:
    """Every activation's trials (faint) and Pareto front (a line) of `y` against L0, log axes,
    one colour per activation, the matched L0 values marked."""
    done = complete(df).dropna(subset=["final_l0", y])
    done = done[(done["final_l0"] > 0) & (done[y] > 0)]
    names = (done["activation"].fillna("topk") if "activation" in done
             else pd.Series("topk", index=done.index))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=COLUMN, layout="constrained")
        colors = palette(names)
        for activation, front in fronts(df, y).items():
            group = done[names == activation]
            ax.scatter(group["final_l0"], group[y], s=8, color=colors[activation], alpha=0.35,
                       linewidths=0)
            ax.plot(front["final_l0"], front[y], color=colors[activation], lw=1.0,
                    marker="o", ms=2.5, label=activation)
        for l0 in MATCHED_L0:
            ax.axvline(l0, color="grey", lw=0.4, ls=":", zorder=0)
        l0_axes(ax, y, "activation")
        return _save(fig, out, name)
