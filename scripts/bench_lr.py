"""Learning-rate grids over SAE shapes, the fit of the default rule, and its check on new data.

    # grids: every shape at 5 multiples of the default rule's rate, held-out FVU of each
    python scripts/bench_lr.py run --store results/minilm_store --run-id pkgdocs_l3 \
        --layer encoder.layer.3 --json results/bench/lr_minilm.json
    # the fit of harness.core.recipes' constants over the grids of several stores
    python scripts/bench_lr.py fit results/bench/lr_minilm.json results/bench/lr_smollm2.json
    # the check: on a store not in the fit, each shape's default against its 5-point grid
    python scripts/bench_lr.py run --store results/smollm2_l3_store --run-id pkgdocs_l3 \
        --layer model.layers.3 --shapes check --factors 0.5,0.71,1,1.41,2 \
        --json results/bench/lr_check.json

A shape is `expansion:k:batch:steps`. Every run trains TopK through the real trainer
(`SaeTrainer`, its default recipe: warm-up, weight average, least-squares finish) for exactly
`steps` steps of `batch` tokens, as many epochs as that takes, and is scored by the trainer's
held-out split (never trained on). Runs go to `--workers` processes of one thread each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

# the fit's grid: steps and batch sizes varied at one width and k
FIT_SHAPES = ("4:32:512:100,4:32:512:400,4:32:512:1000,4:32:1024:50,4:32:1024:200,"
              "4:32:4096:50")
# the check: widths 2-16x, k 8-128, each batch size, 50-1000 steps
CHECK_SHAPES = ("2:8:512:400,16:32:1024:200,8:128:4096:50,4:64:512:100,8:16:1024:500,"
                "2:32:4096:125,8:32:512:1000")
SHAPE_SETS = {"fit": FIT_SHAPES, "check": CHECK_SHAPES}


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    text = SHAPE_SETS.get(text, text)
    shapes = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            raise SystemExit(f"--shapes: {item!r} is not expansion:k:batch:steps (integers)")
        shapes.append(tuple(int(p) for p in parts))
    return shapes  # type: ignore[return-value]


def train_one(job: dict) -> dict:
    """One run in a worker process (one thread): its held-out FVU and wall time."""
    import torch

    from harness import LocalStore, SaeTrainer, SaeTrainingConfig, TopKSae
    from harness.core.recipes import default_lr

    torch.set_num_threads(1)
    n = job["expansion"] * job["d"]
    tokens = job["batch"] * job["steps"]
    rule = default_lr(n, job["d"], job["steps"], job["batch"], job["spread"])
    cfg = SaeTrainingConfig(batch_size=job["batch"], max_train_tokens=tokens,
                            epochs=max(1, math.ceil(tokens / job["train_tokens"])),
                            lr=rule * job["factor"], eval_every=10**9, seed=job["seed"])
    sae = TopKSae(n, job["d"], job["k"], seed=job["seed"])
    start = time.perf_counter()
    history = SaeTrainer(sae).train(store=LocalStore(job["store"]), run_id=job["run_id"],
                                    layer_signature=job["layer"], config=cfg)
    final = history.final
    assert final is not None
    return {**{k: job[k] for k in ("expansion", "k", "batch", "steps", "factor", "d")},
            "n_latents": n, "spread": job["spread"], "rule_lr": rule,
            "lr": rule * job["factor"], "fvu": final.fvu,
            "tokens": final.tokens, "seconds": time.perf_counter() - start}


def run(args: argparse.Namespace) -> int:
    from harness.core.store import open_store
    from harness.core.store.statistics import participation_ratio

    source = open_store(args.store).open(args.run_id, args.layer)
    d, total = source.d, source.n_tokens
    train = int(total * (1 - 0.05))
    factors = [float(f) for f in args.factors.split(",")]
    shapes = parse_shapes(args.shapes)
    jobs = [{"store": args.store, "run_id": args.run_id, "layer": args.layer, "d": d,
             "train_tokens": train, "expansion": e, "k": k, "batch": b, "steps": s,
             "factor": f, "seed": args.seed, "spread": participation_ratio(source)}
            for e, k, b, s in shapes for f in factors]
    jobs.sort(key=lambda j: -j["expansion"] * j["batch"] * j["steps"])  # long ones first
    print(f"# {args.store} {args.run_id} {args.layer}: d={d}, {total} tokens; "
          f"{len(jobs)} runs on {args.workers} workers", flush=True)
    ctx = multiprocessing.get_context("spawn")
    results = []
    with ctx.Pool(args.workers) as pool:
        for r in pool.imap_unordered(train_one, jobs):
            results.append(r)
            print(f"{r['expansion']}x k={r['k']} B={r['batch']} steps={r['steps']} "
                  f"x{r['factor']:g} lr={r['lr']:.3g}: fvu {r['fvu']:.4f} "
                  f"({r['seconds']:.0f} s)", flush=True)
    print(check_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"store": args.store, "run_id": args.run_id,
                                               "layer": args.layer, "d": d,
                                               "results": results}, indent=1))
    return 0


def by_shape(results: list[dict]) -> dict[tuple, list[dict]]:
    shapes: dict[tuple, list[dict]] = {}
    for r in results:
        key = (r["expansion"], r["k"], r["batch"], r["steps"])
        shapes.setdefault(key, []).append(r)
    return {k: sorted(v, key=lambda r: r["factor"]) for k, v in shapes.items()}


def check_table(results: list[dict]) -> str:
    """Each shape's default (factor 1) against the best of its grid."""
    lines = ["| expansion | k | batch | steps | default lr | default FVU | best FVU | at x | "
             "default / best |", "|---|---|---|---|---|---|---|---|---|"]
    worst = 1.0
    for (e, k, b, s), runs in sorted(by_shape(results).items()):
        best = min(runs, key=lambda r: r["fvu"])
        default = next((r for r in runs if r["factor"] == 1.0), None)
        if default is None:
            continue
        ratio = default["fvu"] / best["fvu"]
        worst = max(worst, ratio)
        lines.append(f"| {e} | {k} | {b} | {s} | {default['lr']:.3g} | {default['fvu']:.4f} | "
                     f"{best['fvu']:.4f} | {best['factor']:g} | {ratio:.4f} |")
    lines.append(f"\nworst default / best: {worst:.4f}")
    return "\n".join(lines)


def curves(paths: list[str]) -> dict[tuple, list[tuple[float, float]]]:
    """Each (store, batch, steps, n_latents, d, spread, k)'s grid as sorted (log lr, log FVU)
    points; one store's grids may come in several files."""
    out: dict[tuple, list[tuple[float, float]]] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for r in data["results"]:
            key = (f"{data['store']}:{data['run_id']}", r["batch"], r["steps"], r["n_latents"],
                   r["d"], r["spread"], r["k"])
            out.setdefault(key, []).append((math.log(r["lr"]), math.log(r["fvu"])))
    return {k: sorted(v) for k, v in out.items()}


def excess(points: list[tuple[float, float]], log_lr: float) -> float:
    """FVU at `log_lr` (interpolated in log-log between the grid's points; past the grid's edge,
    0.3 log FVU per unit of log lr) over the grid's best."""
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    if log_lr < x[0]:
        at = y[0] + 0.3 * (x[0] - log_lr)
    elif log_lr > x[-1]:
        at = y[-1] + 0.3 * (log_lr - x[-1])
    else:
        at = float(np.interp(log_lr, x, y))
    return math.exp(at - y.min())


CONSTANTS = ("LOG_LR", "STEPS_EXP", "BATCH_EXP", "SPREAD_EXP", "LATENTS_EXP")
"""The rule's constants the fit moves (INPUTS_EXP is kept: the stores' d cannot be told from their
spread)."""


def fit(args: argparse.Namespace) -> int:
    """The rule's constants that minimise the mean (then the worst) FVU excess over every grid:
    a walk on a 0.05 lattice from harness.core.recipes' values to the best neighbour until none
    is better (each term is a log ratio to its reference, so the steps are independent)."""
    from harness.core import recipes

    grids = curves(args.grids)

    def rule(c: tuple[float, ...], key: tuple) -> float:
        _, batch, steps, n, d, spread, _k = key
        return (c[0] + c[1] * math.log(steps / recipes.REFERENCE_STEPS)
                + c[2] * math.log(batch / recipes.REFERENCE_BATCH)
                + c[3] * math.log(spread / recipes.REFERENCE_SPREAD)
                + c[4] * math.log(n / recipes.REFERENCE_LATENTS)
                + recipes.INPUTS_EXP * math.log(d / recipes.REFERENCE_INPUTS))

    def score(c: tuple[float, ...]) -> tuple[float, float]:
        ex = [excess(points, rule(c, key)) for key, points in grids.items()]
        return sum(ex) / len(ex), max(ex)

    c = tuple(round(getattr(recipes, name), 2) for name in CONSTANTS)
    here = score(c)
    while True:
        steps = itertools.product((-0.05, 0.0, 0.05), repeat=len(c))
        moves = [tuple(round(a + b, 2) for a, b in zip(c, step, strict=True)) for step in steps]
        best = min(moves, key=score)
        if score(best) >= here:
            break
        c, here = best, score(best)
    print("| store | k | latents | batch | steps | rule lr | FVU / grid's best |\n"
          "|---|---|---|---|---|---|---|")
    for key, points in sorted(grids.items()):
        print(f"| {key[0]} | {key[6]} | {key[3]} | {key[1]} | {key[2]} | "
              f"{math.exp(rule(c, key)):.3g} | {excess(points, rule(c, key)):.4f} |")
    print("\n" + "\n".join(f"{name} = {value:.2f}" for name, value in zip(CONSTANTS, c,
                                                                         strict=True))
          + f"\n(INPUTS_EXP = {recipes.INPUTS_EXP} kept)\nworst FVU / grid's best "
          f"{here[1]:.4f}, mean {here[0]:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="learning-rate grids over shapes on one store")
    r.add_argument("--store", required=True)
    r.add_argument("--run-id", required=True)
    r.add_argument("--layer", required=True)
    r.add_argument("--shapes", default="fit",
                   help="'fit', 'check' or expansion:k:batch:steps,... (default fit)")
    r.add_argument("--factors", default="0.35,0.5,0.71,1,1.41",
                   help="multiples of the default rule's learning rate")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", default=None)
    f = sub.add_parser("fit", help="fit the rule's constants on grids from `run --json`")
    f.add_argument("grids", nargs="+")
    args = p.parse_args(argv)
    return run(args) if args.command == "run" else fit(args)


if __name__ == "__main__":
    sys.exit(main())
