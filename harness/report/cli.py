"""`python -m harness.report STUDY [STUDY ...]`: tables, plots and scaling fits from sweeps.

Reads the study storage and the trial folders only. Writes into `--out` (default
results/<study>/report/): trials.csv (and .parquet), summary.md, table.tex, and PNG + PDF plots
(pareto, learning_curves, importance, lr_sensitivity, scaling). In a notebook:
`harness.report.load_trials("quickstart")` gives the trials as a DataFrame.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.core.metrics import METRICS
from harness.core.paths import unwritable
from harness.core.readback import CorruptFile
from harness.report.architectures import activations, at_matched_l0, plot_architectures
from harness.report.data import (
    ReportError,
    best_per_group,
    complete,
    load_study,
    load_trials,
    pareto_front,
    pruning_summary,
    seed_summary,
)
from harness.report.plots import (
    param_importances,
    plot_importance,
    plot_learning_curves,
    plot_lr_sensitivity,
    plot_pareto,
    plot_scaling,
)
from harness.report.scaling import JointFit, PowerLawFit, fit_joint, fit_per_k
from harness.report.tables import (
    best_table_tex,
    markdown_table,
    scaling_table_tex,
    write_table_tex,
)

__all__ = ["Report", "build_report", "load_trials", "main"]
FORMATS = ("md", "tex", "csv", "parquet")
TRIAL_COLUMNS = {
    "study": "study", "number": "trial", "activation": "activation", "expansion": "expansion",
    "k": "k",
    "n_latents": "latents", "lr": "lr", "final_r2": "R²", "final_fvu": "FVU", "final_l0": "L0",
    "final_dead_ratio": "dead ratio", "tokens_seen": "tokens", "tokens_saved": "tokens saved",
    "wall_time_s": "wall s",
    "finish_share": "finish share",
}
# shown when the study measured them (a space with evaluation.downstream)
DOWNSTREAM_COLUMNS = {"delta_ce": "ΔCE", "ce_loss_score": "CE score", "kl": "KL",
                      "downstream_s": "LM eval s"}


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
    out_dir = Path(out) if out else (Path(results_dir) / studies[0] / "report" if len(studies) == 1
                                     else Path(results_dir) / "reports" / "__".join(studies))
    problem = unwritable(out_dir)
    if problem:
        raise ReportError(f"--out: {problem}")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir=out_dir, trials=df)
    if "csv" in formats:
        df.to_csv(out_dir / "trials.csv", index=False)
        report.files.append(out_dir / "trials.csv")
    if "parquet" in formats:
        df.to_parquet(out_dir / "trials.parquet", index=False)
        report.files.append(out_dir / "trials.parquet")

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
                          + f"trials.csv was written to {out_dir}")
    missing = [c for c in group_by if c not in df.columns]
    if missing:
        raise ReportError(f"--group-by {missing}: not a column; columns: {list(df.columns)}")
    keys = (["study"] if len(studies) > 1 else []) + list(group_by)
    mixed = len(activations(df)) > 1
    if mixed and "activation" not in keys:
        keys.append("activation")  # a TopK and a BatchTopK at one (expansion, k) both count

    best = best_per_group(df, keys, metric)
    by_size = best_per_group(df, ["n_latents", "k"], "fvu")
    if mixed:  # a scaling law is one architecture's
        with_k = complete(df).dropna(subset=["k"])
        if not with_k.empty:
            main = with_k["activation"].fillna("topk").value_counts().index[0]
            by_size = best_per_group(df[df["activation"].fillna("topk") == main],
                                     ["n_latents", "k"], "fvu")
            report.notes.append(f"the scaling fits use the {main} trials only")
    report.fits = fit_per_k(by_size)
    report.joint = fit_joint(by_size)
    if not report.fits:
        report.notes.append("no scaling-law fit: needs 3 or more distinct n_latents at one k")
    if report.joint is None and by_size["k"].nunique() > 1:
        report.notes.append("no joint L(n, k) fit: needs 2+ values of both n_latents and k, "
                            "more than 6 sizes, and a converging fit")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plot that warns is a plot to fix, not to ship
        report.files += plot_pareto(df, out_dir)
        if _has_downstream(df):
            report.files += plot_pareto(df, out_dir, y="delta_ce", name="pareto_delta_ce")
        if mixed:
            report.files += plot_architectures(df, out_dir)
            if _has_downstream(df):
                report.files += plot_architectures(df, out_dir, y="delta_ce",
                                                   name="architectures_delta_ce")
        report.files += plot_learning_curves(df, out_dir, metric)
        if done["lr"].nunique() > 1:
            report.files += plot_lr_sensitivity(df, out_dir)
        else:
            report.notes.append("no lr-sensitivity plot: the learning rate does not vary among "
                                "complete trials")
        if report.fits:
            report.files += plot_scaling(by_size, report.fits, out_dir)
    importances = _importances(studies, storage, results_dir, metric, out_dir, report)

    if "md" in formats:
        path = out_dir / "summary.md"
        path.write_text(_summary_md(label, df, best, keys, metric, report, importances),
                        encoding="utf-8")
        report.files.append(path)
    if "tex" in formats:
        path = out_dir / "table.tex"
        write_table_tex(path, [best_table_tex(best, metric, label),
                               scaling_table_tex(report.fits, report.joint, label)])
        report.files.append(path)
    if wandb_mode and wandb_mode != "off":
        _log_to_wandb(label, df, best, report, wandb_mode)
    return report


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
            report.notes.append(f"no importance plot for {name!r}: {e}")
            continue
        if not values:
            report.notes.append(f"no importance plot for {name!r}: no sampled parameter varies")
            continue
        out[name] = values
        suffix = "" if len(studies) == 1 else f"_{name}"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report.files += plot_importance(values, out_dir, metric, f"importance{suffix}")
    return out


def _has_downstream(df: pd.DataFrame) -> bool:
    return "delta_ce" in df.columns and bool(complete(df)["delta_ce"].notna().any())


def _summary_md(label: str, df: pd.DataFrame, best: pd.DataFrame, group_by: Sequence[str],
                metric: str, report: Report, importances: dict[str, dict[str, float]]) -> str:
    col = f"final_{metric}"
    larger = METRICS[metric].larger_is_better
    done = complete(df).sort_values(col, ascending=not larger)
    columns = dict(TRIAL_COLUMNS)
    if _has_downstream(df):
        columns.update(DOWNSTREAM_COLUMNS)
    if df["study"].nunique() == 1:
        del columns["study"]
    counts = df["state"].value_counts()
    retried = int(df["superseded"].sum()) if "superseded" in df else 0
    lines = [f"# Sweep report: {label}", "",
             f"{len(df)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
             + (f" ({retried} failed trials were retried as new trials)" if retried else "")
             + ". Metrics are on the held-out split (R² = 1 − FVU, FVU = Σ(x−x̂)² / Σ(x−μ)²; "
             "L0 = mean active latents per token).", ""]
    lines += ["## Best trials", "", markdown_table(done.head(10), columns), ""]
    lines += [f"## Best per ({', '.join(group_by)})", "", markdown_table(best, columns), ""]
    lines += ["## Pareto front (FVU vs L0, both minimised)", "",
              markdown_table(pareto_front(df), columns), ""]
    if len(activations(df)) > 1:
        lines += ["## Architectures at matched L0", "",
                  "Held-out FVU on each activation's Pareto front, interpolated in log-log at "
                  "each L0 (nan: outside the L0 range its trials reached).", "",
                  at_matched_l0(df).to_markdown(index=False, floatfmt=".4f"), ""]
        if _has_downstream(df):
            lines += [at_matched_l0(df, y="delta_ce").to_markdown(index=False, floatfmt=".4f"),
                      ""]
    if _has_downstream(df):
        lines += ["## Pareto front (ΔCE vs L0, both minimised)", "",
                  "ΔCE = CE with the SAE spliced into the LM − clean CE, on the study's "
                  "evaluation windows (docs/metrics.md).", "",
                  markdown_table(pareto_front(df, y="delta_ce"), columns), ""]
    seeds = seed_summary(df, metric)
    if not seeds.empty:
        lines += ["## Across seeds (mean ± std)", "", seeds.to_markdown(index=False,
                                                                          floatfmt=".4g"), ""]
    prune = pruning_summary(df)
    spent = pd.to_numeric(df["tokens_seen"], errors="coerce").fillna(0).sum()
    lines += ["## Pruning", "", f"The study's trials trained {int(spent):,} tokens in all; "
              f"pruning saved {int(df['tokens_saved'].sum()):,}.", ""]
    if prune.empty:
        lines += ["No trial was pruned.", ""]
    else:
        lines += [prune.to_markdown(index=False, floatfmt=".3g"), "",
                  "tokens_saved = tokens the pruned trials would have trained to finish "
                  "(planned epochs) minus tokens they trained.", ""]
    lines += ["## Scaling law", ""]
    if not report.fits and report.joint is None:
        lines += ["Not fitted (see *Not produced* below).", ""]
    if report.fits:
        lines += ["FVU = c · n^b at fixed k (best trial per size, 95% CI):", "",
                  "| k | exponent b | 95% CI | c | points | R² (log-log) | reliable |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {f.k} | {f.exponent:.3f} | [{f.exponent_ci[0]:.3f}, {f.exponent_ci[1]:.3f}]"
                  f" | {f.coefficient:.3g} | {f.n_points} | {f.r2_log:.3f} | "
                  f"{'no' if f.unreliable else 'yes'} |" for f in report.fits]
        lines.append("")
        lines += _unreliable_notes([(f"k={f.k}", f) for f in report.fits])
    if report.joint is not None:
        lines += ["Joint fit (Gao et al. 2024): L(n, k) = exp(α + β_k log k + β_n log n + "
                  "γ log k log n) + exp(ζ + η log k):", "", "| parameter | value | 95% CI |",
                  "|---|---|---|"]
        lines += [f"| {name} | {v:.3f} | [{lo:.3f}, {hi:.3f}] |"
                  for name, (v, lo, hi) in report.joint.params.items()]
        lines.append("")
        lines += _unreliable_notes([("the joint fit", report.joint)])
    if importances:
        lines += ["## Hyperparameter importance (Optuna fANOVA, target: final held-out "
                  f"{METRICS[metric].header})", ""]
        for name, values in importances.items():
            lines += [f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()), ""]
    failed = df[df["state"] == "failed"]
    if not failed.empty:
        lines += ["## Failed trials", "", markdown_table(
            failed, {"study": "study", "number": "trial", "fail_reason": "reason"}), ""]
    if report.notes:
        lines += ["## Not produced", ""] + [f"- {n}" for n in report.notes] + [""]
    lines += ["## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in report.files if p.suffix == ".png"]
    return "\n".join(lines) + "\n"


def _unreliable_notes(fits: list[tuple[str, PowerLawFit | JointFit]]) -> list[str]:
    """A warning per fit whose values mean little, with the sweep that would settle it."""
    lines = [f"**Unreliable: {name}.** {fit.unreliable}. To settle it, {fit.advice}."
             for name, fit in fits if fit.unreliable]
    return [line for note in lines for line in (note, "")]


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study name(s); several are "
                   "concatenated with a `study` column")
    p.add_argument("--storage", help="Optuna storage (else $SAESWEEP_STORAGE, else "
                   "results/<study>/study.journal)")
    p.add_argument("--artifacts", help="where the sweep's artifact store is reachable from this "
                   "machine, if not where the trials recorded it")
    p.add_argument("--results", default="results", help="results folder of the sweeps")
    p.add_argument("--out", help="output folder (default results/<study>/report/)")
    p.add_argument("--format", default=",".join(FORMATS),
                   help="comma-separated: md,tex,csv,parquet (default all)")
    p.add_argument("--metric", choices=("r2", "fvu"), default="r2",
                   help="reconstruction metric for tables and learning curves")
    p.add_argument("--group-by", default="expansion,k",
                   help="columns of the best-per-group table (default expansion,k)")
    p.add_argument("--wandb", choices=("online", "offline", "off"), default="off",
                   help="also log the tables and plots as a W&B report run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = build_report(
            args.studies, storage=args.storage, results_dir=args.results, out=args.out,
            formats=[f.strip() for f in args.format.split(",") if f.strip()],
            metric=args.metric, group_by=[c.strip() for c in args.group_by.split(",")],
            wandb_mode=args.wandb, artifacts=args.artifacts)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except CorruptFile as e:  # the study itself cannot be read: nothing to build from
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report for {', '.join(args.studies)} in {report.out_dir}/:")
    for path in report.files:
        print(f"  {path.name}")
    for note in report.notes:
        print(f"  note: {note}")
    return 0

