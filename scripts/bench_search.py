"""Search efficiency: how much of an exhaustive grid's training finds the grid's best SAEs.

On one store, through the real CLI (`python -m harness.sweep`), it runs:

- the grid, the ground truth: expansion x k x lr_scale, every point trained to --tokens;
- each strategy at --seeds seeds:
    default    the shipped spaces' strategy: TPE, lr_scale in --prior (log, around the default
               rule), token rungs {tokens: [tokens/8, tokens], reduction: 4, group_by: [k]}
               promoting by the predicted full-budget FVU; a budget of --share of the grid's
               tokens and --compute-share of its compute (tokens x latents);
    hyperband  Optuna's HyperbandPruner with TPE (continuation; lr_scale in [0.25, 4]);
    fixed      one full trial per k at the widest expansion and the default learning rate;
    random     random sampling, every trial at the full budget;
    tpe        TPE, every trial at the full budget.
  Each anchor runs at the compute the default strategy spent at the same seed (fixed: its 4
  trials).

For each strategy and seed it prints each k's best held-out FVU over the grid's best for that k
(full-budget trials only), the worst of those, the worst best per (expansion, k) cell (inf: a
cell it never trained in full), its tokens and compute over the grid's, and the coverage of its
scaling law's 90% intervals: the share of the grid's cells whose best FVU lies in the interval
the strategy's own trials predict for them (harness.report.predictions). Then the medians over
seeds; the last line is the default strategy's:

    worst best-per-k ratio: X; tokens vs grid: Y; compute vs grid: Z; coverage: C

    python scripts/bench_search.py --store DIR --run-id R --layer L [--seeds 3] [--out DIR]

--tokens (a trial's full budget) defaults to the smaller of 270,336 and the store's training
split; a --tokens more than --epochs of the split hold is refused before the grid runs. Studies
are kept in --out: a second run reuses the finished ones (--fresh deletes them first).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from benchmarks.search_spaces import STRATEGIES, grid_low_space, grid_space, strategy_space

from harness.core.store import open_store
from harness.core.store.statistics import participation_ratio
from harness.core.training import SaeTrainingConfig
from harness.report.data import complete, load_trials
from harness.report.predictions import cell_predictions, observations_of
from harness.sweep.prediction import FEATURES, ScalingModel

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKENS = 270_336


@dataclass(frozen=True)
class Score:
    """One strategy run against the grid."""

    strategy: str
    seed: int
    per_k: dict[str, float]
    """Its best held-out FVU per k over the grid's best for that k (inf: no full-budget trial)."""
    worst_k: float
    worst_cell: float
    """The worst best-per-(expansion, k) ratio (inf: a cell with no full-budget trial)."""
    cells_within_2pct: int
    tokens: int
    tokens_vs_grid: float
    compute: float
    """Training tokens x latents of every trial (lower rungs and pruned ones up to where they
    stopped)."""
    compute_vs_grid: float
    coverage: float | None
    """The share of the grid's cells whose best FVU lies in the 90% interval the strategy's own
    scaling law predicts for it."""
    wall_s: float
    trials: int
    full_widths: dict[str, int]
    """How many of its full-budget trials had each expansion."""


def sweep(space: dict[str, Any], out: Path) -> float:
    """Run (or resume) one study through the CLI; its wall seconds."""
    path = out / f"{space['study']['name']}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", str(path)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sweep {path} failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
                 f"{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def best(df: pd.DataFrame, by: list[str]) -> pd.Series:
    return complete(df).dropna(subset=["final_fvu"]).groupby(by)["final_fvu"].min()


def compute_of(df: pd.DataFrame) -> float:
    return float((df["tokens_seen"].fillna(0) * df["n_latents"].fillna(0)).sum())


def coverage_of(df: pd.DataFrame, grid: pd.DataFrame) -> float | None:
    """The share of the grid's (n_latents, k) cells whose best FVU lies in the interval the
    strategy's trials predict for it, trained there or not."""
    space = (sorted(grid["expansion"].dropna().unique()), sorted(grid["k"].dropna().unique()))
    cells = cell_predictions(df, space)
    if cells is None:
        return None
    truth = best(grid, ["n_latents", "k"])
    held = [row.low <= truth[(row.n_latents, row.k)] <= row.high
            for row in cells.itertuples() if (row.n_latents, row.k) in truth.index]
    return sum(held) / len(held) if held else None


def score(strategy: str, seed: int, df: pd.DataFrame, grid: pd.DataFrame, wall: float) -> Score:
    per_k, grid_k = best(df, ["k"]), best(grid, ["k"])
    ratios = {str(int(k)): float(per_k.get(k, math.inf) / v) for k, v in grid_k.items()}
    cells, grid_cells = best(df, ["expansion", "k"]), best(grid, ["expansion", "k"])
    cell_ratios = [float(cells.get(c, math.inf) / v) for c, v in grid_cells.items()]
    tokens, compute = int(df["tokens_seen"].fillna(0).sum()), compute_of(df)
    return Score(strategy=strategy, seed=seed, per_k=ratios, worst_k=max(ratios.values()),
                 worst_cell=max(cell_ratios),
                 cells_within_2pct=sum(r <= 1.02 for r in cell_ratios), tokens=tokens,
                 tokens_vs_grid=tokens / int(grid["tokens_seen"].sum()), compute=compute,
                 compute_vs_grid=compute / compute_of(grid), coverage=coverage_of(df, grid),
                 wall_s=wall, trials=len(df), full_widths={
                     f"{e:g}": int(n) for e, n in complete(df)["expansion"].value_counts()
                     .sort_index().items()})


def show(s: Score) -> str:
    ks = " ".join(f"{k}:{r:.4f}" for k, r in s.per_k.items())
    cover = "n/a" if s.coverage is None else f"{s.coverage:.2f}"
    return (f"{s.strategy:9s} seed {s.seed}  best-per-k/grid [{ks}]  worst {s.worst_k:.4f}  "
            f"worst cell {s.worst_cell:.4f} ({s.cells_within_2pct} cells within 2%)  "
            f"tokens {s.tokens_vs_grid:.3f}x  compute {s.compute_vs_grid:.3f}x  "
            f"coverage {cover}  {s.trials} trials  {s.wall_s:.0f} s  full-budget widths "
            + ",".join(f"{e}x:{n}" for e, n in s.full_widths.items()))


def trial_tokens(args: argparse.Namespace) -> int:
    """A full trial's tokens: --tokens, else the smaller of DEFAULT_TOKENS and what --epochs of
    the store's training split hold, in whole batches; SystemExit (before the grid runs) when
    --tokens asks for more than the split holds."""
    source = open_store(args.store).open(args.run_id, args.layer)
    config = SaeTrainingConfig(epochs=args.epochs, batch_size=args.batch_size)
    holds = config.steps_on(source) * args.batch_size
    if args.tokens is None:
        tokens = min(DEFAULT_TOKENS, holds)
    elif args.tokens > holds:
        sys.exit(f"--tokens {args.tokens}: {args.epochs} epoch(s) of {args.store} "
                 f"({args.run_id}, {source.n_tokens} tokens, 5% held out) train {holds} tokens "
                 f"at batch {args.batch_size}; pass --tokens {holds} or less, or raise --epochs")
    else:
        tokens = args.tokens
    tokens = tokens // args.batch_size * args.batch_size
    if tokens < 16 * args.batch_size:
        sys.exit(f"{args.store} ({args.run_id}): a trial of {tokens} tokens is under 16 steps "
                 f"of {args.batch_size}; capture more tokens or lower --batch-size")
    return tokens


def medians(scores: list[Score], strategies: list[str]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for strategy in strategies:
        mine = [s for s in scores if s.strategy == strategy]
        covered = [s.coverage for s in mine if s.coverage is not None]
        out[strategy] = {
            "worst_k": statistics.median(s.worst_k for s in mine),
            "worst_cell": statistics.median(s.worst_cell for s in mine),
            "tokens_vs_grid": statistics.median(s.tokens_vs_grid for s in mine),
            "compute_vs_grid": statistics.median(s.compute_vs_grid for s in mine),
            "coverage": statistics.median(covered) if covered else None}
        m = out[strategy]
        print(f"median over {len(mine)} seeds, {strategy}: worst best-per-k ratio "
              f"{m['worst_k']:.4f}, worst cell {m['worst_cell']:.4f}, tokens "
              f"{m['tokens_vs_grid']:.3f}x, compute {m['compute_vs_grid']:.3f}x, coverage "
              f"{'n/a' if m['coverage'] is None else format(m['coverage'], '.2f')}")
    return out


def run_strategies(args: argparse.Namespace, strategies: list[str], grid: pd.DataFrame
                   ) -> list[Score]:
    """Each seed: the default strategy at its shares of the grid, then every anchor at the
    compute it spent."""
    grid_tokens, grid_compute = float(grid["tokens_seen"].sum()), compute_of(grid)
    scores: list[Score] = []
    for seed in range(args.seeds):
        tokens, compute = args.share * grid_tokens, args.compute_share * grid_compute
        for strategy in sorted(strategies, key=lambda s: s != "default"):
            if (strategy == "fixed" and seed) or (strategy != "default"
                                                  and seed >= args.anchor_seeds):
                continue  # the rule has no randomness to vary: one run
            space = strategy_space(args, strategy, seed, tokens, compute)
            wall = sweep(space, args.out)
            df = load_trials(space["study"]["name"], results_dir=args.out)
            scores.append(score(strategy, seed, df, grid, wall))
            print(show(scores[-1]), flush=True)
            if strategy == "default":  # the anchors get what it spent
                tokens, compute = None, max(scores[-1].compute, 1.0)
    return scores


def store_law(args: argparse.Namespace) -> dict[str, float]:
    """The scaling law of this store's grid and first-rung grid under a flat prior: what
    harness.sweep.prediction's prior is measured from."""
    sweep(grid_low_space(args), args.out)
    rows = pd.concat([load_trials(name, results_dir=args.out) for name in ("grid", "grid_low")])
    model = ScalingModel(observations_of(rows), prior_sd=np.full(len(FEATURES), 10.0))
    law = {**model.coefficients(), "noise": model.noise}
    print("scaling law of the grids (flat prior): "
          + ", ".join(f"{name} {value:.4f}" for name, value in law.items()), flush=True)
    return law


def grid_runs(args: argparse.Namespace, grid: pd.DataFrame) -> list[dict[str, Any]]:
    source = open_store(args.store).open(args.run_id, args.layer)
    spread = participation_ratio(source)
    return [{"expansion": float(r.expansion), "k": int(r.k), "batch": args.batch_size,
             "steps": int(r.tokens_seen) // args.batch_size, "factor": float(r.param_lr_scale),
             "d": source.d, "n_latents": int(r.n_latents), "spread": spread, "lr": float(r.lr),
             "fvu": float(r.final_fvu)} for r in complete(grid).itertuples()]


def write_json(args: argparse.Namespace, **parts: Any) -> None:
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, **parts}, indent=1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="the activation store (a folder)")
    p.add_argument("--run-id", required=True, help="the store's activation run")
    p.add_argument("--layer", required=True, help="the run's layer signature")
    p.add_argument("--ks", default="8,16,32,64", help="k values of the grid and the strategies")
    p.add_argument("--expansions", default="2,4,8", help="expansion factors (n_latents / d)")
    p.add_argument("--lr-scales", default="0.5,0.71,1,1.41,2",
                   help="the grid's lr_scale values (times the default learning-rate rule)")
    p.add_argument("--prior", default="0.5,2",
                   help="LOW,HIGH: the default strategy's lr_scale range (log-uniform)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per strategy (medians over them)")
    p.add_argument("--anchor-seeds", type=int, default=None,
                   help="seeds of hyperband, random and tpe (default --seeds)")
    p.add_argument("--tokens", type=int, default=None,
                   help=f"training tokens of one trial at the full budget (default: the smaller "
                        f"of {DEFAULT_TOKENS} and the store's training split)")
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs over the store's training split (enough to reach --tokens)")
    p.add_argument("--batch-size", type=int, default=512,
                   help="tokens per training step (--tokens is rounded down to whole batches)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    p.add_argument("--share", type=float, default=0.1,
                   help="the default strategy's token budget as a share of the grid's tokens")
    p.add_argument("--compute-share", type=float, default=0.15,
                   help="its compute budget (tokens x latents) as a share of the grid's")
    p.add_argument("--strategies", default="default,hyperband,fixed,random",
                   help=f"strategies to run, among {','.join(STRATEGIES)}")
    p.add_argument("--workers", type=int, default=2, help="worker processes of every sweep")
    p.add_argument("--out", help="where the studies go (default results/bench_search/<run-id>)")
    p.add_argument("--fresh", action="store_true", help="delete --out's studies first")
    p.add_argument("--json", help="also write every score to this JSON file")
    p.add_argument("--grids-only", action="store_true",
                   help="run the grids and print their scaling law, no strategies")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    strategies = args.strategies.split(",")
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        p.error(f"--strategies: unknown {unknown}; expected among {list(STRATEGIES)}")
    args.anchor_seeds = args.seeds if args.anchor_seeds is None else args.anchor_seeds
    args.tokens = trial_tokens(args)
    args.out = Path(args.out or ROOT / "results" / "bench_search" / args.run_id)
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    print(f"a full trial: {args.tokens} tokens ({args.tokens // args.batch_size} steps of "
          f"{args.batch_size})", flush=True)
    wall = sweep(grid_space(args), args.out)
    grid = load_trials("grid", results_dir=args.out)
    print(f"grid: {len(grid)} trials, {int(grid['tokens_seen'].sum()):,} tokens, "
          f"{compute_of(grid):.3g} token-latents, {wall:.0f} s; best held-out FVU per k: "
          + ", ".join(f"{int(k)}: {v:.4f}" for k, v in best(grid, ["k"]).items()), flush=True)
    law = store_law(args)
    if args.grids_only:  # the grid's runs in scripts/bench_lr.py's format, for its fit
        write_json(args, law=law, store=args.store, run_id=args.run_id, layer=args.layer,
                   results=grid_runs(args, grid))
        return 0
    scores = run_strategies(args, strategies, grid)
    summary = medians(scores, strategies)
    write_json(args, law=law, scores=[asdict(s) for s in scores], medians=summary)
    m = summary["default" if "default" in strategies else strategies[0]]
    cover = "n/a" if m["coverage"] is None else f"{m['coverage']:.2f}"
    print(f"worst best-per-k ratio: {m['worst_k']:.4f}; tokens vs grid: "
          f"{m['tokens_vs_grid']:.3f}; compute vs grid: {m['compute_vs_grid']:.3f}; "
          f"coverage: {cover}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
