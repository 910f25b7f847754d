"""Held-out FVU against training tokens and wall time, ours and sparsify, from small budgets to
the regime users run, without repeating a token.

    python scripts/bench_curve.py --store results/minilm_big --run-id pkgdocs_l3 \\
        --layer encoder.layer.3 --tokens 200000,500000,1000000,2000000,4000000,8000000 \\
        --sparsify-lrs 2e-3,4e-3 --plot docs/fvu_vs_time.png

Ours trains once per budget with its defaults (the learning rate, warm-up and finish all depend
on the budget), and once more without the finish, which shows the finish's gain at each budget.
sparsify trains once per learning rate at its constant rate, scored at each
budget as it passes it (what a run of that budget would give, as nothing in its step depends on
the length), its clock stopped while it is scored. Data split as in bench_quality.py; the run
needs the largest budget plus --heldout tokens, or the script stops before training.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from bench_quality import heldout_fvu, train_ours
from benchmarks.heldout_split import add_run_arguments, split_run
from benchmarks.sparsify_step import sparsify_trainer

from harness.core.loader import ActivationLoader
from harness.core.store import LocalStore
from harness.core.training import SaeTrainingConfig


@dataclass(frozen=True)
class Point:
    """One trainer at one budget."""

    trainer: str
    """ours, ours without finish, or sparsify lr X."""
    tokens: int
    """Training tokens seen."""
    fvu: float
    """Held-out FVU."""
    seconds: float
    """Wall time of the training to this budget."""


def sparsify_curve(split, layer: str, budgets: list[int], lr: float, args) -> list[Point]:
    from sparsify import SparseCoder, SparseCoderConfig

    cfg = SaeTrainingConfig(batch_size=args.batch, holdout_fraction=0.001, seed=args.seed)
    loader = ActivationLoader(LocalStore(split.store).open("train", layer), cfg.loader_config())
    torch.manual_seed(args.seed)
    sae = SparseCoder(split.d, SparseCoderConfig(num_latents=args.n_latents, k=args.k),
                      dtype=torch.float32)
    step = sparsify_trainer(sae, lr)
    points, pending, tokens, clock = [], list(budgets), 0, 0.0

    @torch.no_grad()
    def reconstruct(x: torch.Tensor):
        out = sae(x)
        return out.sae_out, (out.latent_acts > 0).sum()

    for x in loader.train_batches(0):
        start = time.perf_counter()
        step(x)
        clock += time.perf_counter() - start
        tokens += x.shape[0]
        if tokens >= pending[0]:
            fvu, _ = heldout_fvu(reconstruct, split.heldout)
            points.append(Point(f"sparsify lr {lr:g}", tokens, fvu, clock))
            print(json.dumps(asdict(points[-1])), flush=True)
            pending.pop(0)
            if not pending:
                break
    return points


def plot(points: list[Point], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(11, 4.2))
    for trainer in dict.fromkeys(p.trainer for p in points):
        mine = sorted((p for p in points if p.trainer == trainer), key=lambda p: p.tokens)
        style = "o-" if trainer == "ours" else ("o--" if trainer.startswith("ours") else "s:")
        by_time.plot([p.seconds for p in mine], [p.fvu for p in mine], style, label=trainer)
        by_tokens.plot([p.tokens for p in mine], [p.fvu for p in mine], style, label=trainer)
    from matplotlib.ticker import NullFormatter

    for ax, label in ((by_time, "training wall time (s)"), (by_tokens, "training tokens")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # log minor labels overlap
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out FVU")
        ax.grid(True, which="both", alpha=0.3)
    by_tokens.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, use_tokens=False)
    p.add_argument("--tokens", default="200000,1000000,4000000", help="comma-separated budgets")
    p.add_argument("--sparsify-lrs", default="4e-3", help="comma-separated learning rates")
    p.add_argument("--no-finish-runs", action="store_true",
                   help="skip ours without the finish (half of ours' time)")
    p.add_argument("--json", help="also write every point to this JSON file")
    p.add_argument("--merge", help="add the sparsify points of an earlier run's --json (with "
                   "--sparsify-lrs '': sparsify's step does not change with ours' code)")
    p.add_argument("--plot", help="write FVU against wall time and tokens to this PNG")
    args = p.parse_args(argv)
    budgets = sorted(int(float(t)) for t in args.tokens.split(","))
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # the largest budget's tokens plus a batch of slack, none repeated
        need = math.ceil(budgets[-1] / 0.999) + args.batch + args.heldout
        split = split_run(args.store, args.run_id, args.layer, args.heldout, tmp / "store", need)
        if split.n_train * 0.999 < budgets[-1]:
            raise SystemExit(f"{args.store}: {split.n_train:,} training tokens, fewer than the "
                             f"largest budget {budgets[-1]:,}: capture more or lower --tokens")
        print(f"# {args.run_id} {args.layer}: d={split.d}, n_latents={args.n_latents}, "
              f"k={args.k}, batch {args.batch}, {split.n_train:,} distinct training tokens; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
        for lr in (float(v) for v in args.sparsify_lrs.split(",") if v):
            points += sparsify_curve(split, args.layer, budgets, lr, args)
        if args.merge:
            points += [Point(**pt) for pt in json.loads(Path(args.merge).read_text())
                       if pt["trainer"].startswith("sparsify")]
        recipes = [("ours", "default")] + ([] if args.no_finish_runs else
                                           [("ours without finish", "x:decoder_refit=False")])
        for tokens in budgets:
            base = SaeTrainingConfig(batch_size=args.batch, holdout_fraction=0.001, epochs=1,
                                     max_train_tokens=tokens, seed=args.seed, progress=False)
            for name, recipe in recipes:
                s = train_ours(split.store, "train", args.layer, base, split.d, args, recipe,
                               "default", split.heldout, tmp)
                points.append(Point(name, s.tokens, s.fvu, s.seconds))
                print(json.dumps({**asdict(points[-1]), "finish_share": s.finish_share}),
                      flush=True)
    print("\n| trainer | " + " | ".join(f"{t:,}" for t in budgets) + " |")
    print("|---" * (len(budgets) + 1) + "|")
    for trainer in dict.fromkeys(pt.trainer for pt in points):
        cells = [f"{pt.fvu:.4f} ({pt.seconds:.0f} s)" for pt in points if pt.trainer == trainer]
        print(f"| {trainer} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(pt) for pt in points], indent=1))
    if args.plot:
        plot(points, Path(args.plot), f"{args.run_id} {args.layer}: n={args.n_latents}, "
             f"k={args.k}, held-out FVU on the last {args.heldout:,} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
