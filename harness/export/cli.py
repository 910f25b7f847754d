"""`python -m harness.export`: the command (its arguments and --help: harness.export.arguments)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from harness.core.paths import unwritable
from harness.core.sae_formats import read_sae
from harness.errors import SaesweepError
from harness.export.arguments import EXIT_BAD_INPUT, build_parser
from harness.export.unit_norm import unit_norm_decoder

CHECK_TOKENS = 1024


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
    except (OSError, ValueError, SaesweepError) as e:
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
