"""`python -m harness.capture`: the command (its arguments and --help:
harness.capture.arguments; the capture itself: harness.data.capture)."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.capture.arguments import EXIT_BAD_INPUT, build_parser
from harness.core.paths import unwritable
from harness.core.store import StoreError
from harness.data.capture import CaptureConfig, capture
from harness.data.models import list_layers, load_model


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        if args.list_layers:
            for name, kind in list_layers(load_model(args.model).model):
                print(f"{name}\t{kind}")
            return 0
        missing = [f for f in ("layer", "store", "run_id") if getattr(args, f) is None]
        if missing:
            p.error("missing " + ", ".join("--" + m.replace("_", "-") for m in missing))
        problem = unwritable(Path(args.store))
        if problem:
            raise StoreError(f"--store: {problem}")
        result = capture(CaptureConfig(
            model=args.model, layer=args.layer, store=args.store, run_id=args.run_id,
            text=args.text, max_tokens=args.max_tokens, seq_len=args.seq_len,
            batch_size=args.batch_size, dtype=args.dtype, drop_special=not args.keep_special,
            device=args.device, shard_tokens=args.shard_tokens, pair=args.pair))
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if result.resumed_from:
        print(f"resumed after {result.resumed_from} sequences already captured")
    print(f"captured {result.new_tokens} tokens in {result.seconds:.1f} s "
          f"({result.tokens_per_s:,.0f} tokens/s); run {args.run_id!r} now holds "
          f"{result.n_tokens} tokens in {args.store}")
    return 0

