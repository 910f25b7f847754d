"""`python -m harness.evaluate`: the command (its arguments and --help:
harness.evaluate.arguments)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from harness.core.sae_formats import read_sae
from harness.errors import SaesweepError
from harness.evaluate.arguments import EXIT_BAD_INPUT, build_parser
from harness.evaluate.downstream import DownstreamConfig, DownstreamEvaluator

METRIC_GROUPS = ("downstream", "sparse_probing", "absorption")
"""What --metrics may name."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.windows < 1 or args.seq_len < 2 or args.batch_windows < 1 or args.words < 50
            or not 1 <= args.min_letters <= 26):
        print("error: --windows and --batch-windows must be >= 1, --seq-len >= 2, --words "
              ">= 50 and --min-letters in 1..26", file=sys.stderr)
        return EXIT_BAD_INPUT
    groups = [g.strip() for g in args.metrics.split(",") if g.strip()]
    unknown = [g for g in groups if g not in METRIC_GROUPS]
    if unknown or not groups:
        print(f"error: --metrics {args.metrics!r}: expected a comma-separated choice of "
              f"{list(METRIC_GROUPS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    saes = []
    try:  # every SAE and dataset is read before the model is loaded: a typo costs nothing
        for folder in args.sae_dirs:
            saes.append((folder, read_sae(folder)))
            if saes[-1][1].transcoder and {"sparse_probing", "absorption"} & set(groups):
                raise ValueError(f"{folder}: a transcoder; sparse probing and absorption are "
                                 "measured on an SAE's own layer")
        datasets = None
        if "sparse_probing" in groups:
            from harness.evaluate.probing_data import resolve_datasets

            datasets = resolve_datasets(args.datasets.split(",") if args.datasets else None)
        evaluator = _downstream(args, saes) if "downstream" in groups else None
        lm = evaluator.lm if evaluator is not None else None
        if len(groups) > ("downstream" in groups):
            from harness.data.models import load_model

            lm = lm or load_model(args.model, args.device, causal=True)
        probing = _probing(args, datasets, lm) if datasets is not None else None
        letters = _letters(args, lm) if "absorption" in groups else None
    except (OSError, ValueError, SaesweepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for folder, sae in saes:
        start = time.perf_counter()
        line: dict[str, Any] = {"sae": str(Path(folder)), "kind": sae.kind}
        if evaluator is not None:  # a transcoder reads the module's input
            line.update(evaluator.evaluate(sae).to_dict())
        if probing is not None:
            from harness.evaluate.sparse_probing import sparse_probing

            sets, base = probing
            line.update({**sparse_probing(sae, sets), **base})
        if letters is not None:
            from harness.evaluate.absorption import absorption

            line.update(absorption(sae, *letters, args.min_letters).to_dict())
        line["seconds"] = round(time.perf_counter() - start, 2)
        # NaN (absorption below --min-letters) is not JSON: null
        print(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v
                          for k, v in line.items()}), flush=True)
    return 0


def _downstream(args: Any, saes: list) -> DownstreamEvaluator:
    """The reference passes (stderr says what they cover), each SAE's width checked."""
    cfg = DownstreamConfig(model=args.model, layer=args.layer, text=args.text,
                           windows=args.windows, seq_len=args.seq_len,
                           batch_windows=args.batch_windows, device=args.device)
    start = time.perf_counter()
    evaluator = DownstreamEvaluator.open(cfg, cache_dir=args.cache)
    ref = evaluator.reference.windows
    print(f"reference ready in {time.perf_counter() - start:.1f} s: {ref.n_kept} "
          f"kept tokens of {args.windows} windows ({ref.description})", file=sys.stderr)
    for folder, sae in saes:
        if sae.n_outputs != evaluator.width:
            what = "d_out" if sae.transcoder else "d_in"
            raise ValueError(f"{folder}: the {sae.kind.replace('_', '-')} has "
                             f"{what}={sae.n_outputs}, but {args.layer} of {args.model} "
                             f"has width {evaluator.width}")
    return evaluator


def _probing(args: Any, datasets: dict, lm: Any) -> tuple:
    """The datasets' embeddings at --layer (cached) and the raw-activation baseline."""
    from harness.evaluate.probing_data import probing_sets
    from harness.evaluate.sparse_probing import baseline

    start = time.perf_counter()
    sets, computed = probing_sets(lm, args.layer, datasets,
                                  Path(args.cache) / "probing" if args.cache else None)
    print(f"sparse probing: {len(sets)} datasets ({computed} embedded now) in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return sets, baseline(sets)


def _letters(args: Any, lm: Any) -> tuple:
    """The first-letter task at --layer (cached) and the letters its probe reads."""
    from harness.evaluate.absorption import letters_measured
    from harness.evaluate.absorption_data import letter_task

    start = time.perf_counter()
    task, computed = letter_task(lm, args.layer, args.words,
                                 Path(args.cache) / "absorption" if args.cache else None)
    letters = letters_measured(task)
    print(f"absorption: {len(task.y_test)} test words, {len(letters)} letters read by the "
          f"probe{' (computed now)' if computed else ''} in {time.perf_counter() - start:.1f} s"
          + ("" if len(letters) >= args.min_letters else
             f"; fewer than --min-letters {args.min_letters}: the rates are NaN"),
          file=sys.stderr)
    return task, letters
