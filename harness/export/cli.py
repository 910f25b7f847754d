"""python -m harness.export SAE_DIR OUT_DIR [--unit-norm-decoder]: write the SAE in SAE_DIR (any
folder harness reads) as a folder SAELens 6.x loads (cfg.json + sae_weights.safetensors), check
that it reconstructs as the original does, and say by how much they differ."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from harness.core.paths import unwritable
from harness.core.sae_formats import read_sae
from harness.export import unit_norm_decoder

EXIT_BAD_INPUT = 2
CHECK_TOKENS = 1024


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sae_dir", metavar="SAE_DIR", help="an SAE folder: ours, SAELens', "
                   "sparsify's (cfg.json + sae.safetensors) or dictionary_learning's (ae.pt)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where the SAELens-loadable folder is "
                   "written (must not exist yet, or be empty)")
    p.add_argument("--unit-norm-decoder", action="store_true",
                   help="decoder rows of unit norm, the encoder scaled to match (exact for "
                        "ReLU, JumpReLU, BatchTopK and Matryoshka; refused for TopK)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out_dir)
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"{out}: exists and is not an empty folder; nothing is overwritten")
        problem = unwritable(out)
        if problem:
            raise ValueError(problem)
        sae = read_sae(args.sae_dir)
        exported = unit_norm_decoder(sae) if args.unit_norm_decoder else sae
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    exported.save(out, metadata={"exported_from": str(Path(args.sae_dir).resolve()),
                                 "unit_norm_decoder": bool(args.unit_norm_decoder)})
    diff = _max_difference(sae, exported)
    print(f"wrote {out}/ ({exported.activation}, d_in {exported.n_inputs}, d_sae "
          f"{exported.n_latents}); largest reconstruction difference from {args.sae_dir} on "
          f"{CHECK_TOKENS} random inputs: {diff:.2e}")
    return 0


@torch.no_grad()
def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest |x_hat_a - x_hat_b| on random inputs at the scale of the decoder bias."""
    gen = torch.Generator().manual_seed(0)
    d = a.n_inputs
    scale = max(1.0, float(a.b_dec.abs().max()))
    x = (torch.randn(CHECK_TOKENS, d, generator=gen) * scale).to(a.W_dec)
    return float((a(x).reconstruction - b(x).reconstruction).abs().max())
