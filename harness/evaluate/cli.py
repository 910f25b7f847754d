"""`python -m harness.evaluate`: the command (its arguments and --help:
harness.evaluate.arguments)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from harness.core.sae_formats import read_sae
from harness.errors import SaesweepError
from harness.evaluate.arguments import EXIT_BAD_INPUT, build_parser
from harness.evaluate.downstream import DownstreamConfig, DownstreamEvaluator


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.windows < 1 or args.seq_len < 2 or args.batch_windows < 1:
        print("error: --windows and --batch-windows must be >= 1 and --seq-len >= 2",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    saes = []
    try:  # every SAE is read before the model is loaded: a typo costs nothing
        for folder in args.sae_dirs:
            saes.append((folder, read_sae(folder)))
        cfg = DownstreamConfig(model=args.model, layer=args.layer, text=args.text,
                               windows=args.windows, seq_len=args.seq_len,
                               batch_windows=args.batch_windows, device=args.device)
        start = time.perf_counter()
        evaluator = DownstreamEvaluator.open(cfg, cache_dir=args.cache)
        ref = evaluator.reference.windows
        print(f"reference ready in {time.perf_counter() - start:.1f} s: {ref.n_kept} "
              f"kept tokens of {args.windows} windows ({ref.description})",
              file=sys.stderr)
        for folder, sae in saes:
            if sae.n_outputs != evaluator.width:
                what = "d_out" if sae.transcoder else "d_in"
                raise ValueError(f"{folder}: the {sae.kind.replace('_', '-')} has "
                                 f"{what}={sae.n_outputs}, but {args.layer} of {args.model} "
                                 f"has width {evaluator.width}")
    except (OSError, ValueError, SaesweepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for folder, sae in saes:
        start = time.perf_counter()
        metrics = evaluator.evaluate(sae)  # a transcoder reads the module's input
        print(json.dumps({"sae": str(Path(folder)), "kind": sae.kind, **metrics.to_dict(),
                          "seconds": round(time.perf_counter() - start, 2)}), flush=True)
    return 0
