"""The export command's line (`python -m harness.export --help`), kept apart from the command
so that parsing it imports nothing heavy."""

from __future__ import annotations

import argparse

DESCRIPTION = """python -m harness.export SAE_DIR OUT_DIR [--unit-norm-decoder]: write the SAE in
SAE_DIR (any folder harness reads) as a folder SAELens 6.x loads (cfg.json +
sae_weights.safetensors), check that it reconstructs as the original does, and say by how much
they differ."""
"""What the command does (its --help)."""
EXIT_BAD_INPUT = 2
"""Exit status when the SAE folder or OUT_DIR cannot be used."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.export", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sae_dir", metavar="SAE_DIR", help="an SAE folder: ours, SAELens', "
                   "sparsify's (cfg.json + sae.safetensors) or dictionary_learning's (ae.pt)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where the SAELens-loadable folder is "
                   "written (must not exist yet, or be empty)")
    p.add_argument("--unit-norm-decoder", action="store_true",
                   help="decoder rows of unit norm, the encoder scaled to match (exact for "
                        "ReLU, JumpReLU, BatchTopK and Matryoshka; refused for TopK)")
    return p
