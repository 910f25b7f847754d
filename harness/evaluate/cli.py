"""python -m harness.evaluate: splice saved SAEs into their language model and print, per SAE,
one JSON object with ce_orig, ce_sae, ce_zero, delta_ce, ce_loss_score, kl, kl_score, fvu, l0
and tokens (docs/metrics.md). Every SAE is scored on the same windows (harness.evaluate.windows),
so SAEs trained elsewhere (SAELens', sparsify's, dictionary_learning's folders:
harness.core.sae_formats) compare with ours.

    python -m harness.evaluate results/smollm2_l6/trials/0003 --model smollm2 \\
        --layer model.layers.6 --windows 64 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness.core.store import StoreError
from harness.data.corpora import CORPORA
from harness.evaluate.downstream import DownstreamConfig, DownstreamEvaluator
from harness.evaluate.saes import load_reconstructor

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    defaults = DownstreamConfig(model="", layer="")
    p = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sae_dirs", nargs="+", metavar="SAE_DIR",
                   help="SAE folders: ours or SAELens' (cfg.json + sae_weights.safetensors), "
                        "sparsify's (cfg.json + sae.safetensors), dictionary_learning's (ae.pt)")
    p.add_argument("--model", required=True,
                   help="a named model (smollm2), a local folder or a hub id of a causal LM")
    p.add_argument("--layer", required=True, help="module path of the hook point, as captured")
    p.add_argument("--text", default=defaults.text,
                   help=f"a corpus ({', '.join(CORPORA)}), a folder of .txt files, or a UTF-8 "
                   f"file of blank-line separated documents (default {defaults.text})")
    p.add_argument("--windows", type=int, default=defaults.windows,
                   help=f"windows evaluated: the first N (default {defaults.windows})")
    p.add_argument("--seq-len", type=int, default=defaults.seq_len,
                   help=f"text tokens per window, after the BOS (default {defaults.seq_len})")
    p.add_argument("--batch-windows", type=int, default=defaults.batch_windows,
                   help=f"windows per forward pass (default {defaults.batch_windows})")
    p.add_argument("--device", default="cpu", help="where the model runs (default cpu)")
    p.add_argument("--cache", help="folder to keep the clean and zero-ablated passes in, so a "
                   "later call on the same windows skips them")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.windows < 1 or args.seq_len < 2 or args.batch_windows < 1:
        print("error: --windows and --batch-windows must be >= 1 and --seq-len >= 2",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    saes = []
    try:  # every SAE is read before the model is loaded: a typo costs nothing
        for folder in args.sae_dirs:
            saes.append((folder, *load_reconstructor(folder)))
        cfg = DownstreamConfig(model=args.model, layer=args.layer, text=args.text,
                               windows=args.windows, seq_len=args.seq_len,
                               batch_windows=args.batch_windows, device=args.device)
        start = time.perf_counter()
        evaluator = DownstreamEvaluator.open(cfg, cache_dir=args.cache)
        ref = evaluator.reference.windows
        print(f"reference ready in {time.perf_counter() - start:.1f} s: {ref.n_kept} "
              f"kept tokens of {args.windows} windows ({ref.description})",
              file=sys.stderr)
        for folder, _, d_in in saes:
            if d_in != evaluator.width:
                raise ValueError(f"{folder}: the SAE has d_in={d_in}, but {args.layer} of "
                                 f"{args.model} has width {evaluator.width}")
    except (OSError, ValueError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for folder, reconstruct, _ in saes:
        start = time.perf_counter()
        metrics = evaluator.evaluate(reconstruct)
        print(json.dumps({"sae": str(Path(folder)), **metrics.to_dict(),
                          "seconds": round(time.perf_counter() - start, 2)}), flush=True)
    return 0
