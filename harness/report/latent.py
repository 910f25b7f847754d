"""The report's part on what the latents are good for: the sparse-probing and absorption
metrics a study measured (evaluation.sparse_probing, evaluation.absorption), as a table and as a
front of each against L0."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.core.metrics import METRICS
from harness.core.pareto import pareto_mask
from harness.report.data import complete
from harness.report.plots import COLUMN, STYLE, _save, palette
from harness.report.tables import markdown_table

SOURCES = ("sparse_probing", "absorption")
PANEL_COLUMNS = 4


def latent_metrics(df: pd.DataFrame) -> list[str]:
    """The study's measured metrics of these kinds that can be objectives, in table order (not
    the raw-activation baseline: the same for every SAE of a layer)."""
    done = complete(df)
    return [n for n, m in METRICS.items() if m.source in SOURCES and m.objective
            and "baseline" not in n and n in done and bool(done[n].notna().any())]


def front(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Complete trials on the front of minimal L0 and the best `metric`, sorted by L0."""
    done = complete(df).dropna(subset=["final_l0", metric])
    if done.empty:
        return done
    mask = pareto_mask(done["final_l0"], done[metric],
                       maximize=[False, METRICS[metric].larger_is_better])
    return done[mask].sort_values("final_l0")


def latent_fronts_figure(df: pd.DataFrame, metrics: list[str]) -> plt.Figure:
    """A panel per metric: its value against L0 (log), coloured by expansion, front in black."""
    rows = -(-len(metrics) // PANEL_COLUMNS)
    cols = min(len(metrics), PANEL_COLUMNS)
    fig, axes = plt.subplots(rows, cols, figsize=(COLUMN[0] * cols * 0.75, COLUMN[1] * rows),
                             layout="constrained", squeeze=False)
    done = complete(df)
    colors = palette(done["expansion"])
    for ax, metric in zip(axes.flat, metrics, strict=False):
        points = done.dropna(subset=["final_l0", metric])
        points = points[points["final_l0"] > 0]
        for expansion, group in points.groupby("expansion"):
            ax.scatter(group["final_l0"], group[metric], s=12, color=colors[expansion],
                       alpha=0.8, linewidths=0, label=f"{expansion:g}x")
        best = front(points, metric)
        ax.plot(best["final_l0"], best[metric], color="black", lw=0.9, marker="o", ms=4,
                mfc="none", zorder=3, label="front")
        ax.set_xscale("log")
        ax.set_xlabel("L0")
        ax.set_ylabel(METRICS[metric].header)
        ax.grid(True, lw=0.3, alpha=0.5)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    axes.flat[0].legend(title="expansion", loc="best")
    return fig


def plot_latent_fronts(df: pd.DataFrame, out: Path) -> list[Path]:
    """latent_fronts.png/.pdf, when the study measured any of these metrics."""
    metrics = latent_metrics(df)
    if not metrics:
        return []
    with plt.rc_context(STYLE):
        return _save(latent_fronts_figure(df, metrics), out, "latent_fronts")


def latent_section(df: pd.DataFrame) -> list[str]:
    """summary.md's section: every complete trial's values by L0, and each metric's front."""
    metrics = latent_metrics(df)
    if not metrics:
        return []
    done = complete(df).sort_values("final_l0")
    columns = {"number": "trial", "expansion": "expansion", "k": "k", "final_l0": "L0",
               **{m: METRICS[m].header for m in metrics}}
    lines = ["## Sparse probing and absorption", "",
             "Sparse probing: mean test accuracy / AUC over the datasets of a probe on the top "
             "k latents; absorption: the first-letter task (docs/metrics.md).", ""]
    base = done.get("sparse_probing_baseline_accuracy")
    if base is not None and base.notna().any():
        lines += [f"The probe on the raw activations: accuracy {float(np.nanmean(base)):.3f}.",
                  ""]
    lines += [markdown_table(done, columns, floatfmt=".3f"), "", "Fronts against L0 "
              "(latent_fronts.png): " + "; ".join(
                  f"{m}: trials {', '.join(str(int(n)) for n in front(df, m)['number'])}"
                  for m in metrics) + ".", ""]
    return lines
