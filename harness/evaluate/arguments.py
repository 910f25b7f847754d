"""The evaluate command's line (`python -m harness.evaluate --help`), kept apart from the command
so that parsing it imports nothing heavy."""

from __future__ import annotations

import argparse

from harness.data.corpora import CORPORA
from harness.evaluate.config import ABSORPTION_WORDS as WORDS
from harness.evaluate.config import MIN_LETTERS, DownstreamConfig

DESCRIPTION = """python -m harness.evaluate: splice saved SAEs into their language model and
print, per SAE, one JSON object with ce_orig, ce_sae, ce_zero, delta_ce, ce_loss_score, kl,
kl_score, fvu, l0 and tokens (docs/metrics.md); with --metrics sparse_probing and absorption,
the sparse-probing accuracies and AUCs and the first-letter absorption rates. Every SAE is
scored on the same windows
(harness.evaluate.windows), so SAEs trained elsewhere (SAELens', sparsify's, dictionary_learning's
folders: harness.core.sae_formats) compare with ours. A transcoder (ours, SAELens' or
sparsify's) replaces the --layer module's output with its output of the module's input.

    python -m harness.evaluate results/smollm2_l6/trials/0003 --model smollm2 \\
        --layer model.layers.6 --windows 64 --seq-len 128
"""
"""What the command does (its --help)."""
EXIT_BAD_INPUT = 2
"""Exit status when an SAE folder, the model or an option cannot be used."""


def build_parser() -> argparse.ArgumentParser:
    defaults = DownstreamConfig(model="", layer="")
    p = argparse.ArgumentParser(prog="python -m harness.evaluate", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sae_dirs", nargs="+", metavar="SAE_DIR",
                   help="SAE folders: ours or SAELens' (cfg.json + sae_weights.safetensors), "
                        "sparsify's (cfg.json + sae.safetensors), dictionary_learning's (ae.pt)")
    p.add_argument("--model", required=True,
                   help="a named model (smollm2), a local folder or a hub id of a causal LM")
    p.add_argument("--layer", required=True,
                   help="module path of the hook point, as captured (a transcoder's: the "
                        "module whose output it reconstructs)")
    p.add_argument("--text", default=defaults.text,
                   help=f"a corpus ({', '.join(CORPORA)}), a folder of .txt files, or a UTF-8 "
                   f"file of blank-line separated documents (default {defaults.text}: not the "
                   "text the README's SmolLM2 store was captured from; choose text your SAE was "
                   "not trained on)")
    p.add_argument("--windows", type=int, default=defaults.windows,
                   help=f"windows evaluated: the first N (default {defaults.windows})")
    p.add_argument("--seq-len", type=int, default=defaults.seq_len,
                   help=f"text tokens per window, after the BOS (default {defaults.seq_len})")
    p.add_argument("--batch-windows", type=int, default=defaults.batch_windows,
                   help=f"windows per forward pass (default {defaults.batch_windows})")
    p.add_argument("--device", default="cpu", help="where the model runs (default cpu)")
    p.add_argument("--cache", help="folder to keep the clean and zero-ablated passes in, so a "
                   "later call on the same windows skips them")
    p.add_argument("--metrics", default="downstream",
                   help="comma-separated: downstream (ΔCE, CE-loss score, KL), "
                        "sparse_probing (sae-probes' datasets; pip install --no-deps "
                        "sae-probes==0.4.2 zstandard) and absorption (first-letter task) "
                        "(default downstream)")
    p.add_argument("--datasets", help="with sparse_probing: comma-separated sae-probes dataset "
                   "names, e.g. 5_hist_fig_ismale, or CSV files with prompt and target columns "
                   "(default: the documented subset)")
    p.add_argument("--words", type=int, default=WORDS,
                   help=f"with absorption: single-token words of the first-letter task "
                   f"(default {WORDS})")
    p.add_argument("--min-letters", type=int, default=MIN_LETTERS,
                   help="with absorption: letters the first-letter probe must read (F1 > 0.6) "
                   f"for the rates to be reported (default {MIN_LETTERS}, SAEBench's)")
    return p
