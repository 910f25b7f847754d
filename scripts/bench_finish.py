"""What the least-squares finish costs and keeps: ours trained through the seed API at each
budget with several finish recipes, the finish's share of the training loop's time (from the
trial history) and the share of the full finish's FVU gain each keeps.

    python scripts/bench_finish.py --store results/minilm_store --run-id pydoc_l3 \\
        --layer encoder.layer.3 --tokens 50000,200000,1000000

Recipes are bench_quality.py's (`NAME:key=value,...`). The defaults: `default` (the shipped
recipe: the weights' moving average, then the budgeted finish), `none` (the last step's weights,
no finish), `full` (the finish before its budget: every token trained on, the plain
least-squares decoder, the encoder refit; no average), `average only` (no finish), and `dec all`
(the average, then the decoder refit with its prior on every token). "Gain kept" is
(none - recipe) / (none - full) in held-out FVU. Data split as in
bench_quality.py: the run's last --heldout tokens are held out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from bench_quality import Score, train_ours
from benchmarks.heldout_split import add_run_arguments, split_run

from harness.core.training import SaeTrainingConfig

RECIPES = ["default", "none:decoder_refit=False,weight_average_fraction=0.0",
           "full:finish_tokens=1000000000,decoder_prior_tokens=0,encoder_refit=True,"
           "weight_average_fraction=0.0",
           "average only:decoder_refit=False", "dec all:finish_tokens=1000000000"]


def table(rows: list[tuple[int, Score]]) -> str:
    """One line per (budget, recipe): FVU, times, the finish's share and the gain it keeps."""
    lines = ["| tokens | recipe | held-out FVU | wall s | finish s | finish share | gain kept |",
             "|---|---|---|---|---|---|---|"]
    for tokens in dict.fromkeys(t for t, _ in rows):
        at = {s.trainer: s for t, s in rows if t == tokens}
        none, full = at.get("none"), at.get("full")
        for s in at.values():
            kept = ""
            if none and full and none.fvu != full.fvu:
                kept = f"{(none.fvu - s.fvu) / (none.fvu - full.fvu):.0%}"
            lines.append(f"| {tokens:,} | {s.trainer} | {s.fvu:.4f} | {s.seconds:.1f} | "
                         f"{s.finish_s:.2f} | {s.finish_share:.1%} | {kept} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--tokens", default="50000,200000,1000000",
                   help="comma-separated training budgets (default 50k, 200k, 1M)")
    p.add_argument("--recipe", action="append", help=f"repeatable (default: {RECIPES})")
    p.add_argument("--json", help="also write every score to this JSON file")
    args = p.parse_args(argv)
    budgets = [int(float(t)) for t in args.tokens.split(",")]
    rows: list[tuple[int, Score]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        split = split_run(args.store, args.run_id, args.layer, args.heldout, tmp / "store",
                          args.use_tokens)
        print(f"# {args.run_id} {args.layer}: d={split.d}, n_latents={args.n_latents}, "
              f"k={args.k}, batch {args.batch}, {split.n_train:,} distinct training tokens; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
        for tokens in budgets:
            base = SaeTrainingConfig(batch_size=args.batch, holdout_fraction=0.001,
                                     epochs=math.ceil(tokens / (split.n_train * 0.999)),
                                     max_train_tokens=tokens, seed=args.seed, progress=False)
            for recipe in args.recipe or RECIPES:
                score = train_ours(split.store, "train", args.layer, base, split.d, args,
                                   recipe, "default", split.heldout, tmp)
                rows.append((tokens, score))
                print(json.dumps({"tokens": tokens, **asdict(score)}), flush=True)
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([{"tokens": t, **asdict(s)} for t, s in rows],
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
