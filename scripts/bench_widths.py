"""Where the wide-code paths take over, on this machine: a gathered ReLU/JumpReLU step against a
dense one as the width grows (activations.base.DENSE_SHARE), and the refit's sums as a scatter
of code pairs against one sparse-by-dense product as k grows (refit.MAX_PAIRED_CODES).

    python scripts/bench_widths.py [--n-latents 3072] [--d 384] [--batch 4096]

Random inputs (timing only); each figure is the median of --repeats after a warm-up, and each
ratio is against the baseline timed in the same process (the dense step; the pair scatter).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from harness.core.activations import base
from harness.core.sae import TopKSae
from harness.core.training import refit


def median_s(fn: Callable[[], None], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def jumprelu_step(n: int, d: int, x: torch.Tensor, margin: float, dense: bool) -> Callable:
    """A bf16 training step of a JumpReLU SAE whose thresholds sit `margin` data deviations up
    (a higher margin, fewer active latents, a narrower gathered width)."""
    sae = TopKSae(n, d, None, activation="jumprelu",
                  activation_options={"jumprelu_init_threshold": margin})
    sae.activation_fn.begin_training(sae, 1.0)
    opt = torch.optim.Adam(sae.parameters())

    def step() -> None:
        base.DENSE_SHARE = 0.0 if dense else 1.0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sae(x)
            loss = (out.reconstruction.float() - x).pow(2).mean() + 1e-3 * (
                sae.activation_fn.l0_penalty(sae, out))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step.width = out.top_values.shape[1]

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-latents", type=int, default=3072)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    n, d = args.n_latents, args.d
    x = torch.randn(args.batch, d, generator=torch.Generator().manual_seed(0))
    shares = base.DENSE_SHARE, refit.MAX_PAIRED_CODES
    print(f"# n={n} d={d} batch={args.batch}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    try:
        dense = median_s(jumprelu_step(n, d, x, 0.8, dense=True), args.repeats)
        print("\nJumpReLU step, gathered against dense:\n\n| width | gathered s | dense s | "
              "ratio |\n|---|---|---|---|")
        for margin in (1.3, 1.0, 0.8, 0.65, 0.55, 0.45):
            step = jumprelu_step(n, d, x, margin, dense=False)
            seconds = median_s(step, args.repeats)
            print(f"| {step.width} | {seconds:.3f} | {dense:.3f} | {seconds / dense:.2f} |")
        print("\nRefit sums of one batch, pair scatter against sparse @ dense:\n\n"
              "| k | pairs s | sparse @ dense s | ratio |\n|---|---|---|---|")
        for k in (k for k in (16, 32, 64, 128) if k < n):
            sae = TopKSae(n, d, k)
            timed = []
            for cap in (math.inf, 1):
                refit.MAX_PAIRED_CODES = cap
                timed.append(median_s(lambda sae=sae: refit.DecoderRefit(
                    n, d, torch.device("cpu")).observe(sae, x, bf16=True), args.repeats))
            print(f"| {k} | {timed[0]:.3f} | {timed[1]:.3f} | {timed[1] / timed[0]:.2f} |")
    finally:
        base.DENSE_SHARE, refit.MAX_PAIRED_CODES = shares
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
