"""Paper figures: each is saved as PNG (300 dpi) and PDF, sized for one column (3.4 in wide).

Conventions: labelled axes with units, 8 pt text, the Okabe-Ito colour-blind-safe palette for
categories (viridis when there are more than eight), constrained layout so nothing overlaps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from harness.core.metrics import METRICS  # noqa: E402
from harness.core.pareto import pareto_mask  # noqa: E402
from harness.report.data import complete, full_budget, load_history  # noqa: E402
from harness.report.scaling import PowerLawFit  # noqa: E402

# Okabe-Ito without its yellow, which is too faint on white
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
COLUMN = (3.4, 2.5)
STYLE = {"font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "legend.fontsize": 7,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False,
         "axes.spines.right": False, "legend.frameon": False, "pdf.fonttype": 42}


def palette(values: Sequence) -> dict:
    """A colour per distinct value: Okabe-Ito up to seven, viridis beyond."""
    distinct = sorted(set(values))
    if len(distinct) <= len(OKABE_ITO):
        return {v: OKABE_ITO[i] for i, v in enumerate(distinct)}
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(1, len(distinct) - 1)) for i, v in enumerate(distinct)}


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=300)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _label(value: float) -> str:
    return f"{value:g}"


def _labelled(decades: float) -> set[int]:
    """The mantissas labelled on a log axis spanning `decades` (1 = the powers of ten)."""
    if decades < 0.5:
        return set(range(1, 10))
    return {1, 2, 3, 5, 7} if decades <= 1.3 else ({1, 2, 5} if decades <= 2 else {1})


def _labelled_limits(lo: float, hi: float) -> tuple[float, float]:
    """The data range [lo, hi] widened to labelled values at both ends, so every point lies
    inside labelled ticks (widening can thin the labels: repeated until it holds)."""
    a, b = lo, hi
    for _ in range(4):
        keep = sorted(_labelled(math.log10(b / a)))
        below = [m * 10.0**e for e in range(math.floor(math.log10(lo)) - 1,
                                              math.floor(math.log10(lo)) + 1) for m in keep]
        above = [m * 10.0**e for e in range(math.floor(math.log10(hi)),
                                              math.floor(math.log10(hi)) + 2) for m in keep]
        new = (max(v for v in below if v <= lo * (1 + 1e-9)),
               min(v for v in above if v >= hi * (1 - 1e-9)))
        if new == (a, b):
            break
        a, b = new
    return a, b


def _plain_log(ax: plt.Axes, which: str = "xy") -> None:
    """Log axes labelled 0.05, 0.1, 0.2 ... instead of 5x10^-2, ending at labelled values on
    both sides of the data. Minor ticks are all labelled on an axis shorter than half a decade,
    at 2, 3, 5, 7 up to 1.3 decades, at 2 and 5 up to two decades, not at all beyond (so labels
    never crowd)."""
    for name in which:
        axis = ax.xaxis if name == "x" else ax.yaxis
        if axis.get_scale() != "log":
            continue
        lo, hi = sorted(axis.get_data_interval())
        if lo > 0 and math.isfinite(hi) and hi > lo:
            lo, hi = _labelled_limits(lo, hi)
            if not hi > lo:  # data within one labelled value (e.g. every trial at L0 = k)
                lo, hi = lo / 1.25, hi * 1.25
            (ax.set_xlim if name == "x" else ax.set_ylim)(lo, hi)
        else:
            lo, hi = sorted(axis.get_view_interval())
        decades = math.log10(hi / lo) if lo > 0 else math.inf
        keep = _labelled(decades) - {1}

        def minor(v: float, _: int, keep: set = keep, short: bool = decades < 0.5) -> str:
            mantissa = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
            return f"{v:g}" if short or mantissa in keep else ""

        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(ticker.FuncFormatter(minor))


def plot_pareto(df: pd.DataFrame, out: Path, y: str = "final_fvu",
                name: str = "pareto") -> list[Path]:
    """`y` (held-out FVU, or a downstream metric such as delta_ce) vs L0 of complete trials (log
    axes), coloured by expansion, the front highlighted."""
    with plt.rc_context(STYLE):
        return _save(pareto_figure(df, y), out, name)


def pareto_figure(df: pd.DataFrame, y: str = "final_fvu") -> plt.Figure:
    """The Pareto plot (see plot_pareto)."""
    done = complete(df).dropna(subset=["final_l0", y])
    done = done[(done["final_l0"] > 0) & (done[y] > 0)]
    fig, ax = plt.subplots(figsize=COLUMN, layout="constrained")
    colors = palette(done["expansion"])
    for expansion, group in done.groupby("expansion"):
        ax.scatter(group["final_l0"], group[y], s=14, color=colors[expansion],
                   alpha=0.8, linewidths=0, label=f"{_label(expansion)}x")
    front = done[pareto_mask(done["final_l0"], done[y])].sort_values("final_l0")
    ax.step(front["final_l0"], front[y], where="post", color="black", lw=0.9,
            zorder=3, label="Pareto front")
    ax.scatter(front["final_l0"], front[y], s=22, facecolors="none",
               edgecolors="black", linewidths=0.8, zorder=4)
    l0_axes(ax, y, "expansion")
    return fig


def l0_axes(ax: plt.Axes, y: str, legend: str) -> None:
    """Log axes of `y` (held-out FVU, or a downstream metric) against held-out L0, labelled, with
    a legend titled `legend` and a light grid."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log(ax)
    ax.set_xlabel("L0 (held-out active latents per token)")
    ax.set_ylabel("FVU (held-out, fraction)" if y == "final_fvu"
                  else METRICS[y.removeprefix("final_")].label)
    ax.legend(title=legend, loc="best", handletextpad=0.3, borderaxespad=0.2)
    ax.grid(True, which="major", lw=0.3, alpha=0.5)


R2_FLOOR = -1.0  # learning curves: R² axis bottom; a run below it is hopeless, drawn to the edge


def plot_learning_curves(df: pd.DataFrame, out: Path, metric: str = "r2") -> list[Path]:
    """Held-out metric over training tokens; pruned trials end in a cross where pruning cut
    (a triangle on the lower edge when that point lies below the axis)."""
    with plt.rc_context(STYLE):
        return _save(learning_curves_figure(df, metric), out, "learning_curves")


def learning_curves_figure(df: pd.DataFrame, metric: str = "r2") -> plt.Figure:
    """The learning-curves plot: the R² axis goes down to the lowest curve (to R2_FLOOR at
    most), so a pruned curve is drawn whole unless it is hopeless."""
    kinds = {"complete": OKABE_ITO[0], "pruned": OKABE_ITO[1]}
    lowest: list[float] = []
    cuts: list[tuple[float, float]] = []
    drawn: set[str] = set()
    fig, ax = plt.subplots(figsize=COLUMN, layout="constrained")
    for _, row in df[df["state"].isin(list(kinds))].iterrows():
        folder = row.get("sae_path")  # its folder, or fetched from artifacts; else NaN
        history = load_history(folder) if isinstance(folder, str) else None
        if not history or not history.get("tokens"):
            continue
        x = np.asarray(history["tokens"], float)
        y = np.asarray(history[metric], float)
        finite = np.isfinite(y)  # a degenerate evaluation cannot be drawn (nor log-scaled)
        x, y = x[finite], y[finite]
        if not len(y):
            continue
        color = kinds[row["state"]]
        ax.plot(x, y, color=color, lw=0.7, alpha=0.7)
        drawn.add(row["state"])
        if row["state"] == "pruned":
            cuts.append((x[-1], y[-1]))
        lowest.append(float(np.nanmin(y)))
    below = False
    if metric == "r2" and lowest:
        low = min(lowest)
        bottom = max(low - 0.05 * (1.0 - low), R2_FLOOR)  # a margin below the lowest point
        ax.set_ylim(bottom=bottom, top=1.0)
        for cx, cy in cuts:
            if cy < bottom:
                below = True
                ax.plot(cx, bottom, marker="v", color=kinds["pruned"], ms=4, clip_on=False)
            else:
                ax.plot(cx, cy, marker="x", color=kinds["pruned"], ms=4, mew=1.0)
    else:
        for cx, cy in cuts:
            ax.plot(cx, cy, marker="x", color=kinds["pruned"], ms=4, mew=1.0)
    if metric == "fvu":
        ax.set_yscale("log")
        _plain_log(ax, "y")
    ax.set_xlabel("training tokens")
    ax.set_ylabel(METRICS[metric].label)
    ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
    # only what the figure shows: one line per trial, its held-out metric at each evaluation
    handles = [Line2D([], [], color=kinds[state], lw=1, label=f"a {state} trial")
               for state in kinds if state in drawn]
    if any(cy >= ax.get_ylim()[0] for _, cy in cuts) or (cuts and metric != "r2"):
        handles.append(Line2D([], [], color=kinds["pruned"], marker="x", lw=0,
                              label="where it was pruned"))
    if below:
        handles.append(Line2D([], [], color=kinds["pruned"], marker="v", lw=0,
                              label="pruned below the axis"))
    if handles:
        ax.legend(handles=handles, loc="lower right")
    ax.grid(True, lw=0.3, alpha=0.5)
    return fig


def param_importances(study: optuna.Study, metric: str = "r2",
                      full_budget_only: bool = True) -> dict[str, float]:
    """Optuna's fANOVA importances of the sampled parameters for the final held-out metric,
    over the complete trials that recorded it (at the full budget only, as the fronts: a lower
    token rung's R² is another quantity)."""
    key = f"final_{metric}"
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if key in t.user_attrs and (not full_budget_only or full_budget(t, study))]
    if not trials:
        raise ValueError("no complete trial at the full budget recorded "
                         f"{METRICS[metric].header}")
    kept = optuna.create_study(directions=study.directions)  # in memory: the kept trials
    kept.add_trials(trials)
    return optuna.importance.get_param_importances(
        kept, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        target=lambda t: t.user_attrs[key])


def plot_importance(importances: dict[str, float], out: Path, metric: str = "r2",
                    name: str = "importance") -> list[Path]:
    names = list(importances)[::-1]
    with plt.rc_context(STYLE):
        height = max(1.4, 0.35 * len(names) + 0.6)
        fig, ax = plt.subplots(figsize=(COLUMN[0], height), layout="constrained")
        ax.barh(names, [importances[n] for n in names], color=OKABE_ITO[0], height=0.6)
        ax.set_xlabel(f"fANOVA importance for {METRICS[metric].label}")
        ax.set_xlim(0, 1)
        return _save(fig, out, name)


def plot_lr_sensitivity(df: pd.DataFrame, out: Path) -> list[Path]:
    """Final FVU against what the space sampled: `lr_scale` (a multiple of the default rule's
    learning rate, which depends on width and steps) where it sampled that, else the learning
    rate; one colour per k."""
    x = "param_lr_scale" if "param_lr_scale" in df and df["param_lr_scale"].notna().any() else "lr"
    done = complete(df).dropna(subset=[x, "final_fvu"])
    done = done[done["final_fvu"] > 0]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=COLUMN, layout="constrained")
        colors = palette(done["k"])
        many = len(colors) > len(OKABE_ITO)
        for k, group in done.groupby("k"):  # points only: other parameters vary between them
            ax.scatter(group[x], group["final_fvu"], s=12, color=colors[k], linewidths=0,
                       label=None if many else f"k={int(k)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log(ax)
        ax.set_xlabel("lr_scale (x the default learning rate)" if x == "param_lr_scale"
                      else "learning rate")
        ax.set_ylabel("FVU (held-out, fraction)")
        if many:
            sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(done["k"].min(),
                                                                          done["k"].max()))
            fig.colorbar(sm, ax=ax, label="k")
        else:
            ax.legend(loc="best", ncols=2, handlelength=1.2)
        ax.grid(True, which="major", lw=0.3, alpha=0.5)
        return _save(fig, out, "lr_sensitivity")


def plot_scaling(best: pd.DataFrame, fits: list[PowerLawFit], out: Path) -> list[Path]:
    """Best FVU per n_latents at each k, with the fitted power laws drawn over the points."""
    with plt.rc_context(STYLE):
        return _save(scaling_figure(best, fits), out, "scaling")


def scaling_figure(best: pd.DataFrame, fits: list[PowerLawFit]) -> plt.Figure:
    """The scaling plot; its legend sits below the axes (the fits' labels are long) and the
    note about unreliable fits is wrapped to the column's width."""
    data = best[best["final_fvu"] > 0]
    fig, ax = plt.subplots(figsize=(COLUMN[0], COLUMN[1] + 0.8), layout="constrained")
    colors = palette(data["k"])
    fitted = {f.k: f for f in fits}
    for k, group in data.groupby("k"):
        ax.scatter(group["n_latents"], group["final_fvu"], s=14, color=colors[k],
                   zorder=3, label=None if k in fitted else f"k={int(k)}")
        fit = fitted.get(int(k))
        if fit is not None:
            n = np.geomspace(group["n_latents"].min(), group["n_latents"].max(), 50)
            lo, hi = fit.exponent_ci
            flag = " (unreliable)" if fit.unreliable else ""
            ax.plot(n, fit.predict(n), color=colors[k], lw=0.9,
                    ls=":" if fit.unreliable else "--", alpha=0.6 if fit.unreliable else 1,
                    label=f"k={int(k)}: $n^{{{fit.exponent:.2f}}}$ [{lo:.2f}, {hi:.2f}]{flag}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    _plain_log(ax, "y")
    ax.set_xlabel("n_latents (dictionary size)")
    ax.set_ylabel("FVU (held-out, fraction)")
    fig.legend(loc="outside lower center", ncols=1, handlelength=1.5)
    ax.grid(True, which="major", lw=0.3, alpha=0.5)
    if any(f.unreliable for f in fits):
        ax.set_title("dotted: unreliable fit\n(interval wider than the exponent; see summary.md)",
                     fontsize="small")
    return fig
