"""Search efficiency: how much of an exhaustive grid's training finds the grid's best SAEs.

On one store, through the real CLI (`python -m harness.sweep`), it runs:

- the grid, the ground truth: expansion x k x lr_scale, every point trained to --tokens;
- each strategy at --seeds seeds, each with a token budget of --share of the grid's:
    default  TPE, lr_scale in --prior (log; [0.35, 1.4] around the default rule), token rungs
             fidelity {tokens: [tokens/8, tokens], reduction: 4, group_by: [k]}: every k's
             best configuration at the small budget is re-run at the full one;
    tpe      TPE, lr_scale in [0.25, 4], every trial at the full budget;
    random   random sampling of the same space, every trial at the full budget.

All studies optimise (held-out R², L0), like the shipped spaces. For each strategy and seed it
prints the best held-out FVU per k over the grid's best for that k (only trials at the full
budget count), the worst of those, the worst best per (expansion, k) cell (inf: a cell it never
trained at the full budget), the training tokens (every trial, pruned and lower rungs included,
up to where it stopped) over the grid's, and the sweep's wall time; then each strategy's median
over seeds. The last line is the default strategy's medians:

    worst best-per-k ratio: X; tokens vs grid: Y

    python scripts/bench_search.py --store DIR --run-id R --layer L [--ks 8,16,32,64]
        [--seeds 3] [--tokens 270336] [--workers 2] [--out results/bench_search/R] [--fresh]

Studies are kept in --out: a second run reuses the finished ones (--fresh deletes them first).
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

import pandas as pd
import yaml

from harness.report.data import complete, load_trials

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("default", "tpe", "random")
WIDE = {"type": "float", "low": 0.25, "high": 4.0, "log": True}


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
    wall_s: float
    trials: int


def base_space(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    ks = [int(k) for k in args.ks.split(",")]
    return {
        "study": {"name": name, "seed": seed},
        "data": {"store": args.store, "run_id": args.run_id, "layer_signature": args.layer},
        "training": {"epochs": args.epochs, "max_train_tokens": args.tokens,
                     "batch_size": args.batch_size, "eval_every": args.eval_every},
        "params": {"expansion": {"type": "categorical",
                                 "choices": [float(e) for e in args.expansions.split(",")]},
                   "k": {"type": "categorical", "choices": ks}},
        "objectives": [{"metric": "r2", "direction": "maximize"},
                       {"metric": "l0", "direction": "minimize"}],
        "sampler": {"type": "tpe", "options": {"multivariate": True, "constant_liar": True}},
        "budget": {"n_trials": 1000},
        "workers": args.workers,
        "wandb": {"mode": "off"},
        "results_dir": str(args.out),
    }


def grid_space(args: argparse.Namespace) -> dict[str, Any]:
    space = base_space(args, "grid", 0)
    scales = [float(s) for s in args.lr_scales.split(",")]
    space["params"]["lr_scale"] = {"type": "categorical", "choices": scales}
    space["sampler"] = {"type": "grid"}
    space["budget"] = {"n_trials": n_cells(args) * len(scales)}
    return space


def n_cells(args: argparse.Namespace) -> int:
    return len(args.ks.split(",")) * len(args.expansions.split(","))


def strategy_space(args: argparse.Namespace, strategy: str, seed: int,
                   grid_tokens: float) -> dict[str, Any]:
    space = base_space(args, f"{strategy}_s{seed}", seed)
    space["budget"]["tokens"] = args.share * grid_tokens
    if strategy == "default":
        low, high = (float(v) for v in args.prior.split(","))
        space["params"]["lr_scale"] = {"type": "float", "low": low, "high": high, "log": True}
        first = max(args.batch_size, args.tokens // 8 // args.batch_size * args.batch_size)
        space["training"].pop("max_train_tokens")
        space["fidelity"] = {"tokens": [first, args.tokens], "reduction": 4, "group_by": ["k"]}
    else:
        space["params"]["lr_scale"] = WIDE
        if strategy == "random":
            space["sampler"] = {"type": "random"}
    return space


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


def score(strategy: str, seed: int, df: pd.DataFrame, grid: pd.DataFrame, wall: float) -> Score:
    per_k, grid_k = best(df, ["k"]), best(grid, ["k"])
    ratios = {str(int(k)): float(per_k.get(k, math.inf) / v) for k, v in grid_k.items()}
    cells, grid_cells = best(df, ["expansion", "k"]), best(grid, ["expansion", "k"])
    cell_ratios = [float(cells.get(c, math.inf) / v) for c, v in grid_cells.items()]
    tokens = int(df["tokens_seen"].fillna(0).sum())
    return Score(strategy=strategy, seed=seed, per_k=ratios, worst_k=max(ratios.values()),
                 worst_cell=max(cell_ratios),
                 cells_within_2pct=sum(r <= 1.02 for r in cell_ratios), tokens=tokens,
                 tokens_vs_grid=tokens / int(grid["tokens_seen"].sum()), wall_s=wall,
                 trials=len(df))


def show(s: Score) -> str:
    ks = " ".join(f"{k}:{r:.4f}" for k, r in s.per_k.items())
    return (f"{s.strategy:8s} seed {s.seed}  best-per-k/grid [{ks}]  worst {s.worst_k:.4f}  "
            f"worst cell {s.worst_cell:.4f} ({s.cells_within_2pct} cells within 2%)  "
            f"tokens {s.tokens_vs_grid:.3f}x  {s.trials} trials  {s.wall_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="the activation store (a folder)")
    p.add_argument("--run-id", required=True, help="the store's activation run")
    p.add_argument("--layer", required=True, help="the run's layer signature")
    p.add_argument("--ks", default="8,16,32,64", help="k values of the grid and the strategies")
    p.add_argument("--expansions", default="2,4,8", help="expansion factors (n_latents / d)")
    p.add_argument("--lr-scales", default="0.25,0.5,1,2,4",
                   help="the grid's lr_scale values (times the default learning-rate rule)")
    p.add_argument("--prior", default="0.35,1.4",
                   help="LOW,HIGH: the default strategy's lr_scale range (log-uniform)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per strategy (medians over them)")
    p.add_argument("--tokens", type=int, default=270_336,
                   help="training tokens of one trial at the full budget")
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs over the store's training split (enough to reach --tokens)")
    p.add_argument("--batch-size", type=int, default=512,
                   help="tokens per training step (--tokens is rounded down to whole batches)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    p.add_argument("--share", type=float, default=0.1,
                   help="each strategy's token budget as a share of the grid's planned tokens")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help=f"strategies to run, among {','.join(STRATEGIES)}")
    p.add_argument("--workers", type=int, default=2, help="worker processes of every sweep")
    p.add_argument("--out", help="where the studies go (default results/bench_search/<run-id>)")
    p.add_argument("--fresh", action="store_true", help="delete --out's studies first")
    p.add_argument("--json", help="also write every score to this JSON file")
    args = p.parse_args(argv)
    strategies = args.strategies.split(",")
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        p.error(f"--strategies: unknown {unknown}; expected among {list(STRATEGIES)}")
    # whole batches: a trial trains ceil(tokens / batch) steps, so round down to keep it exact
    args.tokens = max(args.batch_size, args.tokens // args.batch_size * args.batch_size)
    args.out = Path(args.out or ROOT / "results" / "bench_search" / args.run_id)
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)

    wall = sweep(grid_space(args), args.out)
    grid = load_trials("grid", results_dir=args.out)
    grid_tokens = n_cells(args) * len(args.lr_scales.split(",")) * args.tokens
    print(f"grid: {len(grid)} trials, {int(grid['tokens_seen'].sum()):,} tokens, {wall:.0f} s; "
          "best held-out FVU per k: " + ", ".join(
              f"{int(k)}: {v:.4f}" for k, v in best(grid, ["k"]).items()), flush=True)
    scores: list[Score] = []
    for strategy in strategies:
        for seed in range(args.seeds):
            space = strategy_space(args, strategy, seed, grid_tokens)
            wall = sweep(space, args.out)
            scores.append(score(strategy, seed, load_trials(space["study"]["name"],
                                                            results_dir=args.out), grid, wall))
            print(show(scores[-1]), flush=True)
    medians = {}
    for strategy in strategies:
        mine = [s for s in scores if s.strategy == strategy]
        medians[strategy] = {
            "worst_k": statistics.median(s.worst_k for s in mine),
            "worst_cell": statistics.median(s.worst_cell for s in mine),
            "tokens_vs_grid": statistics.median(s.tokens_vs_grid for s in mine)}
        m = medians[strategy]
        print(f"median over {len(mine)} seeds, {strategy}: worst best-per-k ratio "
              f"{m['worst_k']:.4f}, worst cell {m['worst_cell']:.4f}, tokens "
              f"{m['tokens_vs_grid']:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                               "scores": [asdict(s) for s in scores],
                                               "medians": medians}, indent=1))
    main_strategy = "default" if "default" in strategies else strategies[0]
    m = medians[main_strategy]
    print(f"worst best-per-k ratio: {m['worst_k']:.4f}; tokens vs grid: "
          f"{m['tokens_vs_grid']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
