"""Studies as pandas DataFrames, and the aggregations reports are built from.

Everything here reads the study storage and the trial folders only (never W&B).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from harness.core.metrics import METRICS
from harness.core.pareto import pareto_mask
from harness.core.readback import CorruptFile, read_json, safetensors_problem
from harness.core.sae import WEIGHTS_FILE
from harness.core.training.config import SaeTrainingConfig
from harness.errors import SaesweepError
from harness.sweep.artifacts import fetch_trial
from harness.sweep.budget import superseded_numbers
from harness.sweep.optuna_private import study_storage as storage_of
from harness.sweep.rungs import PREDICTED_ATTR
from harness.sweep.space.rungs import full_budget as on_full_budget
from harness.sweep.space.rungs import study_rungs
from harness.sweep.storage import close_storage, open_storage, storage_damage
from harness.sweep.study import STORAGE_ENV, journal_path
from harness.sweep.trial_record import TrialRecord
from harness.sweep.urls import masked

STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
               TrialState.FAIL: "failed", TrialState.RUNNING: "running",
               TrialState.WAITING: "waiting"}


class ReportError(SaesweepError):
    """A study that cannot be reported on (missing, empty); the message says which and why."""


def study_storage(name: str, storage: str | None, results_dir: str | Path) -> str:
    """The storage URL of a study: given, else $SAESWEEP_STORAGE, else the sweep's default
    journal file."""
    storage = storage or os.environ.get(STORAGE_ENV)
    if storage:
        return storage
    path = journal_path(results_dir, name)
    if not path.exists():
        raise ReportError(f"no study storage for {name!r}: {path} does not exist (pass "
                          "--storage, or --results for another results folder)")
    return str(path)


def load_study(name: str, storage: str | None = None,
               results_dir: str | Path = "results") -> optuna.Study:
    """The study `name`; ReportError when there is none, CorruptFile when its journal is
    damaged (a line that is not a record, with records after it)."""
    url = study_storage(name, storage, results_dir)
    damage = storage_damage(url)
    if damage:
        raise CorruptFile(damage)
    backend = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=backend)
    except KeyError:
        names = optuna.get_all_study_names(backend)
        close_storage(backend)
        raise ReportError(f"no study {name!r} in {masked(url)}; studies there: {names}") from None


def load_trials(studies: str | Sequence[str], storage: str | None = None,
                results_dir: str | Path = "results", artifacts: str | None = None
                ) -> pd.DataFrame:
    """One row per trial of each study (a `study` column tells them apart).

    Columns: study, number, state (complete / pruned / failed / running / waiting), superseded
    (a failed trial whose configuration was retried as another trial), retry_of, param_<name>
    for every sampled parameter, expansion, n_latents, k, lr (resolved), seed, final and best
    metrics (final_r2, best_r2, final_fvu, ..., final_l0, final_dead_ratio), tokens_seen,
    planned_tokens, wall_time_s, device, prune_rule / prune_step / prune_tokens /
    prune_reason, fail_reason, trial_dir and sae_path (None when no SAE was saved), corrupt
    (what is wrong with a finished trial's files, else None), value_<i>, rung and full_budget
    (False for a trial of a rung below a fidelity study's last).

    sae_path is the trial's own folder when this machine can read it; otherwise its files are
    fetched from the Optuna artifact store it recorded (or `artifacts`, where that store is
    mounted here) into <results_dir>/<study>/fetched/<number>/.
    """
    names = [studies] if isinstance(studies, str) else list(studies)
    rows: list[dict[str, Any]] = []
    for name in names:
        study = load_study(name, storage, results_dir)
        trials = study.get_trials(deepcopy=False)
        superseded = superseded_numbers(trials)
        training_seed = (study.user_attrs.get("space", {}).get("training", {}) or {}).get("seed", 0)
        fetched = Path(results_dir) / name / "fetched"
        for t in trials:
            row = _row(name, t, t.number in superseded, training_seed, fetched, artifacts)
            row["full_budget"] = full_budget(t, study)
            rows.append(row)
        close_storage(storage_of(study))
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["study", "number", "state"])
    df["tokens_saved"] = tokens_saved(df)
    return df.sort_values(["study", "number"]).reset_index(drop=True)


def full_budget(t: FrozenTrial, study: optuna.Study) -> bool:
    """Whether a trial trained at its study's full budget (False for a rung below the last)."""
    return on_full_budget(t, study_rungs(study))


def trial_files_problem(trial_dir: Path) -> str | None:
    """What is wrong with the files of a finished trial the report reads (its history and
    configs as JSON, its weights' header), or None."""
    for name in ("history.json", "training_config.json", "cfg.json"):
        path = trial_dir / name
        if path.exists():
            try:
                read_json(path)
            except CorruptFile as e:
                return str(e)
    weights = trial_dir / WEIGHTS_FILE
    return safetensors_problem(weights) if weights.exists() else None


def _row(study: str, t: FrozenTrial, superseded: bool, training_seed: int, fetched: Path,
         artifacts: str | None) -> dict[str, Any]:
    record = TrialRecord.from_frozen(t)
    row: dict[str, Any] = {"study": study, "number": t.number,
                           "state": STATE_NAMES.get(t.state, t.state.name.lower()),
                           "superseded": superseded,
                           "retry_of": t.system_attrs.get("failed_trial"),
                           "warm_start": t.user_attrs.get("warm_start")}
    row.update({f"param_{k}": v for k, v in t.params.items()})
    for key in TrialRecord.columns():
        if key != "prune_values":
            row[key] = record.get(key)
    row["seed"] = t.params.get("seed", training_seed)
    trial_dir = record.trial_dir
    # a failed trial's folder may hold a half-saved SAE: only finished trials point at theirs
    finished = t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    row["sae_path"] = None
    row["corrupt"] = None
    if finished and trial_dir and (Path(trial_dir) / WEIGHTS_FILE).exists():
        row["corrupt"] = trial_files_problem(Path(trial_dir))
        row["sae_path"] = trial_dir if row["corrupt"] is None else None
    elif finished and record.artifacts:  # trained on another node: from the artifact store
        location = artifacts or record.artifact_store
        got = fetch_trial(record.artifacts, location, fetched / f"{t.number:04d}") \
            if location else None
        row["sae_path"] = str(got) if got else None
    for i, v in enumerate(t.values or []):
        row[f"value_{i}"] = v
    predicted = t.user_attrs.get(PREDICTED_ATTR) or {}
    row["predicted_fvu"] = predicted.get("fvu")  # the prediction it was promoted on
    row["predicted_low"], row["predicted_high"] = predicted.get("low"), predicted.get("high")
    row["datetime_start"] = t.datetime_start
    row["datetime_complete"] = t.datetime_complete
    if row["planned_tokens"] is None and trial_dir and row["corrupt"] is None:
        row["planned_tokens"] = _planned_tokens(Path(trial_dir), record.get("n_train_tokens"))
    return row


def _planned_tokens(trial_dir: Path, n_train: int | None) -> int | None:
    cfg = trial_dir / "training_config.json"
    if n_train is None or not cfg.exists():
        return None
    try:
        values = read_json(cfg)
        return SaeTrainingConfig.from_dict(values, where=str(cfg)).planned_tokens(int(n_train))
    except (CorruptFile, TypeError, ValueError):
        return None  # an older or damaged config: the column stays empty


def load_history(trial_dir: str | Path) -> dict[str, list] | None:
    """A trial's saved training history (None if the trial saved none); CorruptFile names a
    damaged one."""
    path = Path(trial_dir) / "history.json"
    return read_json(path) if path.exists() else None


# ------------------------------------------------------------------------------ aggregations
def complete(df: pd.DataFrame) -> pd.DataFrame:
    """The complete trials at their full budget: a trial of a rung below the last (a space's
    fidelity:) trained on fewer tokens, so fronts, bests and fits leave it out."""
    if "state" not in df:
        return df
    done = df["state"] == "complete"
    if "full_budget" in df:
        done &= df["full_budget"].fillna(True).astype(bool)
    return df[done]


def metric_column(metric: str) -> tuple[str, bool]:
    """(column of the final metric, True if larger is better)."""
    if metric not in ("r2", "fvu"):
        raise ValueError(f"metric must be r2 or fvu, got {metric!r}")
    return f"final_{metric}", METRICS[metric].larger_is_better


def best_per_group(df: pd.DataFrame, by: Sequence[str], metric: str = "r2") -> pd.DataFrame:
    """The best complete trial of each group (e.g. each (expansion, k))."""
    col, larger = metric_column(metric)
    done = complete(df).dropna(subset=[col])
    if done.empty:
        return done
    groups = done.groupby(list(by), sort=True, dropna=False)  # k is NaN for ReLU and JumpReLU
    idx = groups[col].idxmax() if larger else groups[col].idxmin()
    return done.loc[idx.values].reset_index(drop=True)


def seed_summary(df: pd.DataFrame, metric: str = "r2") -> pd.DataFrame:
    """Mean ± std over seeds for every configuration that was run with more than one seed."""
    col, _ = metric_column(metric)
    done = complete(df)
    params = [c for c in done.columns if c.startswith("param_") and c != "param_seed"]
    keys = ["study", *params] if params else ["study", "n_latents", "k", "lr"]
    if done.empty or done["seed"].nunique() < 2:
        return pd.DataFrame()
    grouped = done.groupby(keys, dropna=False)
    out = grouped.agg(n_seeds=("seed", "nunique"), mean=(col, "mean"), std=(col, "std"),
                      l0_mean=("final_l0", "mean"), l0_std=("final_l0", "std"))
    return out[out["n_seeds"] > 1].reset_index()


def pareto_front(df: pd.DataFrame, x: str = "final_l0", y: str = "final_fvu") -> pd.DataFrame:
    """Complete trials on the front of minimal x and minimal y, sorted by x."""
    done = complete(df).dropna(subset=[x, y])
    if done.empty:
        return done
    return done[pareto_mask(done[x], done[y])].sort_values(x).reset_index(drop=True)


def tokens_saved(df: pd.DataFrame) -> pd.Series:
    """Per trial, the training tokens pruning saved it: a pruned trial's planned tokens minus
    those it trained; 0 for every other trial."""
    if df.empty or "planned_tokens" not in df:
        return pd.Series(0, index=df.index, dtype="int64")
    planned = pd.to_numeric(df["planned_tokens"], errors="coerce")
    seen = pd.to_numeric(df["tokens_seen"], errors="coerce")
    saved = (planned - seen).clip(lower=0).fillna(0)
    return saved.where(df["state"] == "pruned", 0).astype("int64")


def pruning_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per prune rule: trials pruned, tokens they trained, and tokens pruning saved."""
    pruned = df[df["state"] == "pruned"]
    if pruned.empty:
        return pd.DataFrame(columns=["rule", "trials", "tokens_trained", "tokens_saved",
                                     "saved_fraction"])
    saved = tokens_saved(df)[pruned.index]
    table = pd.DataFrame({"rule": pruned["prune_rule"].fillna("unknown"),
                          "tokens_trained": pruned["tokens_seen"], "tokens_saved": saved,
                          "planned": pruned["planned_tokens"]})
    out = table.groupby("rule").agg(trials=("rule", "size"),
                                    tokens_trained=("tokens_trained", "sum"),
                                    tokens_saved=("tokens_saved", "sum"),
                                    planned=("planned", "sum")).reset_index()
    out["saved_fraction"] = out["tokens_saved"] / out["planned"]
    return out.drop(columns="planned")
