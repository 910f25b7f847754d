"""What a sweep prints: a line per finished trial, the time left, and the closing summary (trial
counts, the best trials or the Pareto front, where everything is, and what to run next)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.core.activations import DEFAULT_ACTIVATION
from harness.core.metrics import METRICS
from harness.core.pareto import pareto_mask
from harness.sweep.budget import si
from harness.sweep.space import LoadedSpace, SweepSpace
from harness.sweep.space.rungs import full_budget
from harness.sweep.storage import storage_kind
from harness.sweep.trial_record import TrialRecord
from harness.sweep.urls import masked


def time_left(done: int, done_before: int, n_trials: int, started: float) -> str:
    """`  [7/24, ~18 s left]`: the rate of this run's finished trials times what remains."""
    finished_here = done - done_before
    if finished_here <= 0 or done >= n_trials:
        return f"  [{min(done, n_trials)}/{n_trials}]"
    left = (time.perf_counter() - started) / finished_here * (n_trials - done)
    return f"  [{done}/{n_trials}, ~{_duration(left)} left]"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _k(r: TrialRecord) -> str:
    """k, or "-" for an activation that has none (its L0, set by training, is beside it)."""
    return str(r.k) if r.k is not None else "-"


def trial_line(t: FrozenTrial, loaded: LoadedSpace) -> str:
    r = TrialRecord.from_frozen(t)
    shape = f"k={r.k}" if r.k is not None else f"{r.activation}"
    if r.k is not None and r.activation not in (None, DEFAULT_ACTIVATION):
        shape = f"{r.activation} {shape}"
    cfg = f"n_latents={r.n_latents} {shape} lr={r.lr or 0:.2e}"
    tokens = r.get("tokens_seen")
    if tokens is not None:  # a first-rung trial's R² is not a full-budget trial's
        cfg += f" tokens={si(tokens)}"
    if loaded.space.fidelity is not None and r.rung is not None:
        cfg += f" rung={r.rung + 1}/{len(loaded.space.fidelity.tokens)}"
    secs = r.get("wall_time_s")
    took = f" {secs:.1f}s" if isinstance(secs, float) else ""
    if t.state == TrialState.COMPLETE:
        what = " ".join(f"{name}={METRICS[name].format(r.final(name))}"
                        for name in ("r2", "l0")) + f" dead={_percent(r.final('dead_ratio'))}"
        if r.final("recovery") is not None:
            what += f" recovered={_percent(r.final('recovery'), 0)}"
        if r.final("delta_ce") is not None:
            what += (f" delta_ce={METRICS['delta_ce'].format(r.final('delta_ce'))} "
                     f"ce_score={METRICS['ce_loss_score'].format(r.final('ce_loss_score'))}")
    elif t.state == TrialState.PRUNED:
        what = f"pruned: {r.prune_reason}"
    else:
        what = f"failed: {r.fail_reason}"
    return f"trial {t.number:4d} {t.state.name:8s} {cfg} {what}{took}"


def _percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def best_value(study: optuna.Study, loaded: LoadedSpace) -> str | None:
    """The progress line's best so far: the Pareto front's size, or the best value (trials on
    the full budget only); None before any."""
    space = loaded.space
    done = _comparable(study.get_trials(deepcopy=False), space)
    if not done:
        return None
    if space.multi_objective:
        return f"pareto={len(_front(done, space))}"
    o = space.objectives[0]
    pick = max if o.direction == "maximize" else min
    return f"best {o.metric}={METRICS[o.metric].format(pick(t.values[0] for t in done))}"


def _comparable(trials: list[FrozenTrial], space: SweepSpace) -> list[FrozenTrial]:
    """The complete trials on the full budget (a lower rung trained on fewer tokens)."""
    n_rungs = len(space.fidelity.tokens) if space.fidelity is not None else None
    return [t for t in trials
            if t.state == TrialState.COMPLETE and t.values and full_budget(t, n_rungs)]


def _front(trials: list[FrozenTrial], space: SweepSpace) -> list[FrozenTrial]:
    """The trials no other one Pareto-dominates on the space's objectives."""
    mask = pareto_mask(*zip(*(t.values for t in trials), strict=True),
                       maximize=[o.direction == "maximize" for o in space.objectives])
    return [t for t, keep in zip(trials, mask, strict=True) if keep]


def print_summary(study: optuna.Study, loaded: LoadedSpace, storage: str, out: Path) -> None:
    space = loaded.space
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                  TrialState.RUNNING, TrialState.WAITING)}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    print("trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v))
    first = METRICS[space.objectives[0].metric]
    complete = _comparable(trials, space)
    if complete:
        if space.multi_objective:
            best, title = _front(complete, space), "Pareto front"
        else:
            best, title = complete, "best trials"
        best = sorted(best, key=lambda t: t.values[0], reverse=first.larger_is_better)
        best = best if space.multi_objective else best[:5]
        print(f"{title} ({', '.join(f'{o.direction} {o.metric}' for o in space.objectives)}):")
        records = [TrialRecord.from_frozen(t) for t in best]
        truth = all(r.final("recovery") is not None for r in records)
        lm = all(r.final("delta_ce") is not None for r in records)
        shown = {"delta_ce", "r2", "l0", "dead_ratio", "n_latents", "k"}
        extra = [o.metric for o in space.objectives if o.metric not in shown]  # e.g. probing
        print(f"{'trial':>6}" + "".join(f" {m:>8}" for m in extra)
              + (f" {'delta_ce':>8}" if lm else "") + f" {'r2':>8} {'l0':>6} "
              f"{'dead%':>6} {'n_latents':>9} {'k':>4} "
              f"{'lr':>9}" + (f" {'found%':>6}" if truth else "") + "  folder")
        for r in records:
            found = f" {100 * (r.final('recovery') or 0):6.0f}" if truth else ""
            dce = f" {METRICS['delta_ce'].format(r.final('delta_ce')):>8}" if lm else ""
            own = "".join(f" {METRICS[m].format(r.final(m)):>{max(8, len(m))}}" for m in extra)
            print(f"{r.number:6d}{own}{dce} {METRICS['r2'].format(r.final('r2')):>8} "
                  f"{METRICS['l0'].format(r.final('l0')):>6} "
                  f"{100 * (r.final('dead_ratio') or 0):6.1f} {r.n_latents:9d} {_k(r):>4} "
                  f"{r.lr or 0:9.2e}{found}  {r.trial_dir}")
        if truth:
            print("found% = planted features recovered (a decoder row within cos 0.9 of the "
                  "true direction)")
    print(f"study storage: {masked(storage)}")
    print(f"trial folders: {out / 'trials'}/   worker logs: {out / 'logs'}/")
    if space.wandb.mode == "offline":
        runs = out / "wandb"
        print(f"W&B offline runs: {runs}/ (upload: wandb sync {runs}/offline-run-*)")
    print(next_steps(space.study.name, storage, space.results_dir,
                     None if space.data.synthetic is not None else loaded.path))


def next_steps(study: str, storage: str, results_dir: str, own_space: Path | None = None) -> str:
    """The three commands a user runs after a sweep (the README's first screen shows them):
    after a space on synthetic data, how to point one at their own store; after their own
    space (`own_space`), how to add trials to the same study."""
    report = f"python -m harness.report {study}"
    if results_dir != "results":
        report += f" --results {results_dir}"
    if storage_kind(storage).url_based:
        report += " --storage URL"
    dashboard = f"optuna-dashboard {storage if '://' not in storage else 'URL'}"
    hint = "" if shutil.which("optuna-dashboard") else "   (pip install optuna-dashboard)"
    rows = [(report, f"tables, Pareto front, learning curves -> {results_dir}/{study}/report/"),
            (dashboard, "the study live in a browser" + hint),
            ("python -m harness.sweep my_space.yaml",
             "your store: copy search_spaces/minilm.yaml (or mi_crow_store.yaml), set "
             "data.store, run_id, layer_signature")]
    if own_space is not None:
        rows[-1] = (f"python -m harness.sweep {own_space} --n-trials N",
                    "more trials in the same study (it continues where it stopped)")
    width = max(len(cmd) for cmd, _ in rows)
    return "next:\n" + "\n".join(f"  {cmd:<{width}}  # {why}" for cmd, why in rows)
