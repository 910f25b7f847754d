"""A report from one or more studies (`build_report`): the trials as a DataFrame, tables, plots,
scaling fits and summary.md, and optionally a W&B report run. In a notebook:
`harness.report.load_trials("quickstart")` gives the trials as a DataFrame."""


from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.core.paths import unwritable
from harness.report.architectures import activations, front_labels, plot_architectures
from harness.report.arguments import FORMATS
from harness.report.data import (
    ReportError,
    best_per_group,
    complete,
    load_study,
    load_trials,
)
from harness.report.latent import plot_latent_fronts
from harness.report.plots import (
    param_importances,
    plot_importance,
    plot_learning_curves,
    plot_lr_sensitivity,
    plot_pareto,
    plot_scaling,
)
from harness.report.predictions import (
    cell_predictions,
    plot_predictions,
    promoted,
    space_cells,
)
from harness.report.scaling import JointFit, PowerLawFit, fit_joint, fit_per_k
from harness.report.summary import has_downstream, summary_md
from harness.report.tables import (
    best_table_tex,
    scaling_table_tex,
    write_table_tex,
)
from harness.sweep.optuna_private import study_storage as storage_of
from harness.sweep.storage import close_storage


@dataclass
class Report:
    """What a report run produced."""

    out_dir: Path
    trials: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Things not produced, and why (e.g. too few points for a fit)."""
    fits: list[PowerLawFit] = field(default_factory=list)
    joint: JointFit | None = None
    cells: pd.DataFrame | None = None
    """Predicted full-budget FVU per (n_latents, k) with its 90% interval (predictions.py)."""
    promoted: pd.DataFrame | None = None
    """Trials promoted on a prediction, with it and whether its interval held."""


def build_report(
    studies: Sequence[str],
    storage: str | None = None,
    results_dir: str | Path = "results",
    out: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    metric: str = "r2",
    group_by: Sequence[str] = ("expansion", "k"),
    wandb_mode: str | None = None,
    artifacts: str | None = None,
) -> Report:
    """Build every table and plot; raises ReportError for an empty or all-failed study."""
    studies = list(studies)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ReportError(f"unknown format(s) {sorted(unknown)}; choose from {list(FORMATS)}")
    df = load_trials(studies, storage, results_dir, artifacts)
    label = "+".join(studies)
    if df.empty:
        raise ReportError(f"study {label!r} has no trials yet: nothing to report (run the sweep "
                          "first)")
    report = Report(out_dir=_output_dir(studies, results_dir, out), trials=df)
    _write_trials(df, formats, report)
    df = _usable(df, label, report)
    keys = _group_keys(df, studies, group_by)
    best = best_per_group(df, keys, metric)
    by_size = _fit_scaling(df, report)
    report.cells = cell_predictions(df, _space_cells(studies, storage, results_dir))
    report.promoted = promoted(df)
    _plot(df, by_size, metric, report)
    importances = _importances(studies, storage, results_dir, metric, report.out_dir, report)
    _write_tables(label, df, best, keys, metric, formats, report, importances)
    if wandb_mode and wandb_mode != "off":
        _log_to_wandb(label, df, best, report, wandb_mode)
    return report


def _space_cells(studies: list[str], storage: str | None, results_dir: str | Path
                 ) -> tuple[list[float], list[int]] | None:
    """The (expansion, k) choices of the first study's recorded space (one study's cells)."""
    if len(studies) != 1:
        return None
    study = load_study(studies[0], storage, results_dir)
    space = study.user_attrs.get("space")
    close_storage(storage_of(study))  # an RDB's connections: not left to the collector
    return space_cells(space)


def _output_dir(studies: list[str], results_dir: str | Path, out: str | Path | None) -> Path:
    """--out, else results/<study>/report/ (results/reports/<a>__<b>/ for several); created."""
    out_dir = Path(out) if out else (Path(results_dir) / studies[0] / "report" if len(studies) == 1
                                     else Path(results_dir) / "reports" / "__".join(studies))
    problem = unwritable(out_dir)
    if problem:
        raise ReportError(f"--out: {problem}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _write_trials(df: pd.DataFrame, formats: Sequence[str], report: Report) -> None:
    """Every trial as a row, before anything is left out (trials.csv / .parquet)."""
    if "csv" in formats:
        df.to_csv(report.out_dir / "trials.csv", index=False)
        report.files.append(report.out_dir / "trials.csv")
    if "parquet" in formats:
        df.to_parquet(report.out_dir / "trials.parquet", index=False)
        report.files.append(report.out_dir / "trials.parquet")


def _usable(df: pd.DataFrame, label: str, report: Report) -> pd.DataFrame:
    """The trials the fronts, tables and fits can use, with a note for each kind left out;
    ReportError when no complete one is left."""
    df = _without_corrupt(df, report)
    df = _without_non_finite(df, report)
    for _, row in df[df["state"].isin(["complete", "pruned"]) & df["sae_path"].isna()].iterrows():
        report.notes.append(f"trial {row['number']} of {row['study']}: its SAE is neither in "
                            f"{row['trial_dir']} nor in the artifact store; it is in the tables "
                            "(its metrics are in the study), not in the learning curves")
    done = complete(df)
    lower = int((df["state"] == "complete").sum()) - len(done)
    if lower:
        report.notes.append(f"{lower} complete trial(s) of rungs below the last (fidelity) "
                            "trained on fewer tokens: in trials.csv, not in fronts, tables or fits")
    if done.empty:
        counts = df["state"].value_counts().to_dict()
        reasons = df["fail_reason"].dropna().value_counts().head(3).to_dict()
        raise ReportError(f"study {label!r} has no complete trial ({counts}); nothing to plot. "
                          f"Most common failure reasons: {reasons or 'none recorded'}. "
                          + "".join(f"{note[0].upper()}{note[1:]}. " for note in report.notes)
                          + f"trials.csv was written to {report.out_dir}")
    return df


def _group_keys(df: pd.DataFrame, studies: list[str], group_by: Sequence[str]) -> list[str]:
    """The best-per-group table's columns: --group-by, the study when there are several, the
    activation when there are several."""
    missing = [c for c in group_by if c not in df.columns]
    if missing:
        raise ReportError(f"--group-by {missing}: not a column; columns: {list(df.columns)}")
    keys = (["study"] if len(studies) > 1 else []) + list(group_by)
    if len(activations(df)) > 1 and "activation" not in keys:
        keys.append("activation")  # a TopK and a BatchTopK at one (expansion, k) both count
    if "kind" in df and df["kind"].nunique() > 1 and "kind" not in keys:
        keys.append("kind")  # a transcoder and a skip-transcoder: targets' FVU, two fronts
    return keys


def _fit_scaling(df: pd.DataFrame, report: Report) -> pd.DataFrame:
    """The best trial per (n_latents, k), of one architecture, and the fits over them (in
    `report`); returns those best trials."""
    by_size = best_per_group(df, ["n_latents", "k"], "fvu")
    if len(activations(df)) > 1:  # a scaling law is one architecture's
        with_k = complete(df).dropna(subset=["k"])
        if not with_k.empty:
            main = front_labels(with_k).value_counts().index[0]
            by_size = best_per_group(df[front_labels(df) == main], ["n_latents", "k"], "fvu")
            report.notes.append(f"the scaling fits use the {main} trials only")
    report.fits = fit_per_k(by_size)
    report.joint = fit_joint(by_size)
    if not report.fits:
        report.notes.append("no scaling-law fit: needs 3 or more distinct n_latents at one k")
    if report.joint is None and by_size["k"].nunique() > 1:
        report.notes.append("no joint L(n, k) fit: needs 2+ values of both n_latents and k, "
                            "more than 6 sizes, and a converging fit")
    return by_size


def _plot(df: pd.DataFrame, by_size: pd.DataFrame, metric: str, report: Report) -> None:
    out_dir = report.out_dir
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plot that warns is a plot to fix, not to ship
        report.files += plot_pareto(df, out_dir)
        if has_downstream(df):
            report.files += plot_pareto(df, out_dir, y="delta_ce", name="pareto_delta_ce")
        if len(activations(df)) > 1:
            report.files += plot_architectures(df, out_dir)
            if has_downstream(df):
                report.files += plot_architectures(df, out_dir, y="delta_ce",
                                                   name="architectures_delta_ce")
        report.files += plot_latent_fronts(df, out_dir)
        report.files += plot_learning_curves(df, out_dir, metric)
        if complete(df)["lr"].nunique() > 1:
            report.files += plot_lr_sensitivity(df, out_dir)
        else:
            report.notes.append("no lr-sensitivity plot: the learning rate does not vary among "
                                "complete trials")
        if report.fits:
            report.files += plot_scaling(by_size, report.fits, out_dir)
        if report.promoted is not None and not report.promoted.empty:
            report.files += plot_predictions(report.promoted, out_dir)


def _write_tables(label: str, df: pd.DataFrame, best: pd.DataFrame, keys: list[str],
                  metric: str, formats: Sequence[str], report: Report,
                  importances: dict[str, dict[str, float]]) -> None:
    """summary.md and table.tex, as `formats` asks."""
    if "md" in formats:
        path = report.out_dir / "summary.md"
        path.write_text(summary_md(label, df, best, keys, metric, report, importances),
                        encoding="utf-8")
        report.files.append(path)
    if "tex" in formats:
        path = report.out_dir / "table.tex"
        write_table_tex(path, [best_table_tex(best, metric, label),
                               scaling_table_tex(report.fits, report.joint, label)])
        report.files.append(path)


def _without_corrupt(df: pd.DataFrame, report: Report) -> pd.DataFrame:
    """Trials whose files are damaged are left out of everything but trials.csv, each named
    with what is wrong; the report is built from the rest."""
    if "corrupt" not in df:
        return df
    bad = df["corrupt"].notna()
    for _, row in df[bad].iterrows():
        report.notes.append(f"trial {row['number']} of {row['study']} is left out: "
                            f"{row['corrupt']}")
    return df[~bad].reset_index(drop=True)


def _without_non_finite(df: pd.DataFrame, report: Report) -> pd.DataFrame:
    """Complete trials whose final metrics are not finite (degenerate data, e.g. zero held-out
    variance) cannot be plotted or fitted: leave them out, with a note saying which."""
    columns = [c for c in df.columns if c.startswith(("final_", "best_"))]
    values = df[columns].apply(pd.to_numeric, errors="coerce")
    bad = (df["state"] == "complete") & ~np.isfinite(values.fillna(0.0)).all(axis=1)
    if not bad.any():
        return df
    shown = ", ".join(str(n) for n in df.loc[bad, "number"].head(10))
    report.notes.append(f"{int(bad.sum())} complete trial(s) with non-finite metrics (trial(s) "
                        f"{shown}) are left out of the tables, plots and fits; trials.csv keeps "
                        "them")
    return df[~bad].reset_index(drop=True)


def _importances(studies: list[str], storage: str | None, results_dir: str | Path, metric: str,
                 out_dir: Path, report: Report) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in studies:
        study = load_study(name, storage, results_dir)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=UserWarning)  # Optuna's experimental
                values = param_importances(study, metric, full_budget_only=True)
        except (ValueError, RuntimeError) as e:
            close_storage(storage_of(study))
            report.notes.append(f"no importance plot for {name!r}: {e}")
            continue
        close_storage(storage_of(study))
        if not values:
            report.notes.append(f"no importance plot for {name!r}: no sampled parameter varies")
            continue
        out[name] = values
        suffix = "" if len(studies) == 1 else f"_{name}"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report.files += plot_importance(values, out_dir, metric, f"importance{suffix}")
    return out


def _log_to_wandb(label: str, df: pd.DataFrame, best: pd.DataFrame, report: Report,
                  mode: str) -> None:
    from harness.core.wandb_log import WandbRun

    run = WandbRun(project="saesweep", name=f"report-{label}", config={"studies": label},
                   mode=mode, dir=report.out_dir, job_type="report", group=label)
    if run.run is None:
        return
    import wandb

    row: dict = {"best_per_group": wandb.Table(dataframe=best.drop(
        columns=[c for c in best.columns if c.startswith("datetime")]).astype(str))}
    row.update({p.stem: wandb.Image(str(p)) for p in report.files if p.suffix == ".png"})
    run.log(row, step=0)
    run.set_summary({"trials": len(df), "complete": int((df["state"] == "complete").sum())})
    run.finish()
