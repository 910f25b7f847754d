"""The report's summary.md: the best trial per group, the front, pruning, seeds, importances
and the scaling fits, as Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from harness.core.metrics import METRICS
from harness.report.architectures import activations, at_matched_l0
from harness.report.data import (
    complete,
    pareto_front,
    pruning_summary,
    seed_summary,
)
from harness.report.latent import latent_section
from harness.report.predictions import coverage
from harness.report.scaling import JointFit, PowerLawFit
from harness.report.tables import (
    markdown_table,
)

if TYPE_CHECKING:
    from harness.report.build import Report

TRIAL_COLUMNS = {
    "study": "study", "number": "trial", "kind": "kind", "activation": "activation",
    "expansion": "expansion",
    "k": "k",
    "n_latents": "latents", "lr": "lr", "final_r2": "R²", "final_fvu": "FVU", "final_l0": "L0",
    "final_dead_ratio": "dead ratio", "tokens_seen": "tokens", "tokens_saved": "tokens saved",
    "wall_time_s": "wall s",
    "finish_share": "finish share",
}
CELL_COLUMNS = {"n_latents": "latents", "k": "k", "lr_scale": "lr_scale",
                "predicted_fvu": "predicted FVU", "low": "90% low", "high": "90% high",
                "trained": "trained", "measured_fvu": "measured FVU", "covered": "in interval"}
# shown when the study measured them (a space with evaluation.downstream)
DOWNSTREAM_COLUMNS = {"delta_ce": "ΔCE", "ce_loss_score": "CE score", "kl": "KL",
                      "downstream_s": "LM eval s"}



def has_downstream(df: pd.DataFrame) -> bool:
    return "delta_ce" in df.columns and bool(complete(df)["delta_ce"].notna().any())


def summary_md(label: str, df: pd.DataFrame, best: pd.DataFrame, group_by: Sequence[str],
               metric: str, report: Report, importances: dict[str, dict[str, float]]) -> str:
    """summary.md: its sections in order."""
    columns = dict(TRIAL_COLUMNS)
    if has_downstream(df):
        columns.update(DOWNSTREAM_COLUMNS)
    if df["study"].nunique() == 1:
        del columns["study"]
    lines = (_overview(label, df) + _fronts(df, best, group_by, metric, columns)
             + latent_section(df) + _seeds_and_pruning(df, metric) + _scaling(report)
             + _predictions(report) + _importance_and_failures(df, metric, importances)
             + _not_produced(report))
    return "\n".join(lines) + "\n"


def _overview(label: str, df: pd.DataFrame) -> list[str]:
    counts = df["state"].value_counts()
    retried = int(df["superseded"].sum()) if "superseded" in df else 0
    return [f"# Sweep report: {label}", "",
            f"{len(df)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
            + (f" ({retried} failed trials were retried as new trials)" if retried else "")
            + ". Metrics are on the held-out split (R² = 1 − FVU, FVU = Σ(x−x̂)² / Σ(x−μ)²; "
            "L0 = mean active latents per token)." + _transcoders(df), ""]


def _transcoders(df: pd.DataFrame) -> str:
    """What FVU means for the study's transcoder trials, if it has any."""
    kinds = df["kind"].dropna() if "kind" in df else pd.Series(dtype=object)
    counts = kinds[kinds != "sae"].value_counts()
    if counts.empty:
        return ""
    return (" " + ", ".join(f"{n} {kind.replace('_', '-')}(s)" for kind, n in counts.items())
            + ": their x is the target layer, their FVU, R² and explained variance are of the "
            "target, and they have fronts of their own.")


def _fronts(df: pd.DataFrame, best: pd.DataFrame, group_by: Sequence[str], metric: str,
            columns: dict[str, str]) -> list[str]:
    """The best trials, the best per group, the fronts, and each architecture at matched L0."""
    col = f"final_{metric}"
    done = complete(df).sort_values(col, ascending=not METRICS[metric].larger_is_better)
    lines = ["## Best trials", "", markdown_table(done.head(10), columns), ""]
    lines += [f"## Best per ({', '.join(group_by)})", "", markdown_table(best, columns), ""]
    lines += ["## Pareto front (FVU vs L0, both minimised)", "",
              markdown_table(pareto_front(df), columns), ""]
    if len(activations(df)) > 1:
        lines += ["## Architectures at matched L0", "",
                  "Held-out FVU on each activation's Pareto front, interpolated in log-log at "
                  "each L0 (nan: outside the L0 range its trials reached).", "",
                  at_matched_l0(df).to_markdown(index=False, floatfmt=".4f"), ""]
        if has_downstream(df):
            lines += [at_matched_l0(df, y="delta_ce").to_markdown(index=False, floatfmt=".4f"),
                      ""]
    if has_downstream(df):
        lines += ["## Pareto front (ΔCE vs L0, both minimised)", "",
                  "ΔCE = CE with the SAE spliced into the LM − clean CE, on the study's "
                  "evaluation windows (docs/metrics.md).", "",
                  markdown_table(pareto_front(df, y="delta_ce"), columns), ""]
    return lines


def _seeds_and_pruning(df: pd.DataFrame, metric: str) -> list[str]:
    lines: list[str] = []
    seeds = seed_summary(df, metric)
    if not seeds.empty:
        lines += ["## Across seeds (mean ± std)", "", seeds.to_markdown(index=False,
                                                                          floatfmt=".4g"), ""]
    prune = pruning_summary(df)
    spent = pd.to_numeric(df["tokens_seen"], errors="coerce").fillna(0).sum()
    lines += ["## Pruning", "", f"The study's trials trained {int(spent):,} tokens in all; "
              f"pruning saved {int(df['tokens_saved'].sum()):,}.", ""]
    if prune.empty:
        return lines + ["No trial was pruned.", ""]
    return lines + [prune.to_markdown(index=False, floatfmt=".3g"), "",
                    "tokens_saved = tokens the pruned trials would have trained to finish "
                    "(planned epochs) minus tokens they trained.", ""]


def _scaling(report: Report) -> list[str]:
    """The per-k power laws and the joint fit, each flagged where unreliable."""
    lines = ["## Scaling law", ""]
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
    return lines


def _predictions(report: Report) -> list[str]:
    """Every cell's predicted full-budget FVU, and how often the intervals held."""
    cells, rows = report.cells, report.promoted
    if cells is None or cells.empty:
        return []
    lines = ["## Predicted full-budget FVU", "",
             "A scaling law in tokens, latents, k and lr_scale (harness.sweep.prediction), "
             "fitted on every complete trial, all rungs; 90% intervals. *trained*: a full-budget "
             "trial trained the cell, *measured*: the best of those.", "",
             markdown_table(cells, CELL_COLUMNS), ""]
    held = coverage(cells)
    if held is not None:
        lines += [f"Interval coverage of the trained cells: {held:.0%} of "
                  f"{int(cells['covered'].notna().sum())}.", ""]
    if rows is not None and not rows.empty:
        lines += [f"Interval coverage of the promoted trials' predictions (made before they "
                  f"trained; predictions.png): {coverage(rows):.0%} of {len(rows)}.", ""]
    return lines


def _importance_and_failures(df: pd.DataFrame, metric: str,
                             importances: dict[str, dict[str, float]]) -> list[str]:
    lines: list[str] = []
    if importances:
        lines += ["## Hyperparameter importance (Optuna fANOVA, target: final held-out "
                  f"{METRICS[metric].header})", ""]
        for name, values in importances.items():
            lines += [f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()), ""]
    failed = df[df["state"] == "failed"]
    if not failed.empty:
        lines += ["## Failed trials", "", markdown_table(
            failed, {"study": "study", "number": "trial", "fail_reason": "reason"}), ""]
    return lines


def _not_produced(report: Report) -> list[str]:
    lines = ["## Not produced", ""] + [f"- {n}" for n in report.notes] + [""] \
        if report.notes else []
    return lines + ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in report.files
                                          if p.suffix == ".png"]


def _unreliable_notes(fits: list[tuple[str, PowerLawFit | JointFit]]) -> list[str]:
    """A warning per fit whose values mean little, with the sweep that would settle it."""
    lines = [f"**Unreliable: {name}.** {fit.unreliable}. To settle it, {fit.advice}."
             for name, fit in fits if fit.unreliable]
    return [line for note in lines for line in (note, "")]


