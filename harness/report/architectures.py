"""Architectures compared at matched sparsity: each activation's Pareto front of held-out FVU (or
ΔCE) against held-out L0 on one figure, and each one's FVU at L0 = 16, 32, 64 and 128, read off
its front by interpolation in log-log (SAEBench's comparison; never extrapolated). Transcoders
get fronts of their own, labelled with their kind ("topk transcoder", "topk skip-transcoder"):
FVU of a target is not FVU of an input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.core.activations import DEFAULT_ACTIVATION
from harness.core.pareto import pareto_mask
from harness.report.data import complete
from harness.report.plots import COLUMN, STYLE, _save, l0_axes, palette

MATCHED_POINTS = 4
"""How many L0 values the architecture table reads each front at."""


def front_labels(df: pd.DataFrame) -> pd.Series:
    """Each trial's front: its activation (TopK for records that predate the column), with its
    kind after it where it is a transcoder."""
    names = (df["activation"].fillna(DEFAULT_ACTIVATION) if "activation" in df
             else pd.Series(DEFAULT_ACTIVATION, index=df.index, dtype=object))
    if "kind" in df:
        kind = df["kind"].fillna("sae")
        names = names.where(kind == "sae", names + " " + kind.str.replace("_", "-"))
    return names


def activations(df: pd.DataFrame) -> list[str]:
    """The fronts of the complete trials: their activations (and transcoder kinds)."""
    return sorted(front_labels(complete(df)).unique())


def fronts(df: pd.DataFrame, y: str = "final_fvu") -> dict[str, pd.DataFrame]:
    """Each front's complete trials on its front of minimal L0 and minimal `y`, by L0."""
    done = complete(df).dropna(subset=["final_l0", y])
    done = done[(done["final_l0"] > 0) & (done[y] > 0)]
    names = front_labels(done)
    out = {}
    for name in sorted(names.unique()):
        group = done[names == name]
        out[name] = group[pareto_mask(group["final_l0"], group[y])].sort_values("final_l0")
    return out


def matched_l0s(df: pd.DataFrame, y: str = "final_fvu") -> list[float]:
    """The L0 values to compare the fronts at, from the data: the powers of two inside the L0
    range every front covers (else the range of all of them), or MATCHED_POINTS log-spaced
    values there when it holds fewer than two."""
    ranges = [(f["final_l0"].min(), f["final_l0"].max()) for f in fronts(df, y).values()
              if len(f)]
    if not ranges:
        return []
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if lo > hi:  # no L0 that every front reaches: each is read where it can be
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    powers = [2.0**e for e in range(math.ceil(math.log2(lo)), math.floor(math.log2(hi)) + 1)]
    if len(powers) >= 2:
        step = max(1, math.ceil(len(powers) / MATCHED_POINTS))
        return powers[::step][:MATCHED_POINTS]
    spaced = np.geomspace(lo, hi, MATCHED_POINTS) if hi > lo else np.array([lo])
    return sorted({float(f"{v:.2g}") for v in spaced})


def at_matched_l0(df: pd.DataFrame, y: str = "final_fvu",
                  l0s: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per activation: `y` on its front at each L0 in `l0s` (default: matched_l0s, from
    the data; log-log interpolation between the two front points around it; NaN outside the
    front's L0 range), and how many complete trials it had."""
    l0s = matched_l0s(df, y) if l0s is None else l0s
    rows = []
    for name, front in fronts(df, y).items():
        x, v = np.log(front["final_l0"].to_numpy(float)), np.log(front[y].to_numpy(float))
        row: dict[str, object] = {"activation": name, "trials": int(
            (front_labels(complete(df)) == name).sum()), "front": len(front)}
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
    names = front_labels(done)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=COLUMN, layout="constrained")
        colors = palette(names)
        for activation, front in fronts(df, y).items():
            group = done[names == activation]
            ax.scatter(group["final_l0"], group[y], s=8, color=colors[activation], alpha=0.35,
                       linewidths=0)
            ax.plot(front["final_l0"], front[y], color=colors[activation], lw=1.0,
                    marker="o", ms=2.5, label=activation)
        for l0 in matched_l0s(df, y):
            ax.axvline(l0, color="grey", lw=0.4, ls=":", zorder=0)
        l0_axes(ax, y, "activation")
        return _save(fig, out, name)
