"""What a sweep trial costs outside its training loop, with the store read again for every trial
(a script training once) and with the tokens kept across trials (what a sweep worker does,
harness.core.runtime.token_cache), in one process on one store.

For each mode, `--trials` trainings one after another through `SaeTrainer.train` (d=512,
n_latents=4096, k=32, batch 4096, `--steps` steps, no decoder refit: setup is what is timed):
wall time, the training loop's time (history.elapsed_s: steps and evaluations), and the rest
(store opening and reading, held-out set, b_dec init, pinning on a GPU) as a share of the wall.
The first trial of each mode reads the store either way; the later ones show the difference.

    python scripts/bench_trial_setup.py                          # CPU, 1M tokens, 20 steps
    python scripts/bench_trial_setup.py --device cuda --steps 200
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from harness import LocalStore, SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.runtime import token_cache


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=1_000_000, help="tokens in the store")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--n-latents", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20, help="training steps per trial")
    p.add_argument("--trials", type=int, default=3, help="trials per mode")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"store {args.tokens:,} x {args.d} float32, n_latents={args.n_latents}, k={args.k}, "
          f"batch {args.batch}, {args.steps} steps a trial, device={args.device}, "
          f"torch {torch.__version__}", flush=True)
    later: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        LocalStore(tmp).put_activations("s", "L", torch.randn(args.tokens, args.d),
                                        shard_tokens=65536)
        for label, keep in (("store read per trial", 0), ("tokens kept across trials", 1 << 40)):
            token_cache.keep_tokens(keep)
            for trial in range(args.trials):
                cfg = SaeTrainingConfig(epochs=1, batch_size=args.batch, lr=1e-3,
                                        max_train_tokens=args.steps * args.batch,
                                        decoder_refit=False, progress=False, seed=trial,
                                        device=args.device)
                start = time.perf_counter()
                history = SaeTrainer(TopKSae(args.n_latents, args.d, args.k, seed=trial)).train(
                    tmp, "s", "L", cfg, save=False)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                wall = time.perf_counter() - start
                loop = history.elapsed_s[-1]
                print(f"{label:26s} trial {trial}: wall {wall:6.2f} s, loop {loop:6.2f} s, "
                      f"outside the loop {wall - loop:5.2f} s ({100 * (wall - loop) / wall:4.1f}%)",
                      flush=True)
                if trial:
                    later.setdefault(label, []).append(wall - loop)
            token_cache.keep_tokens(0)
    read, kept = (statistics.mean(v) for v in later.values())
    print(f"after the first trial, outside the loop: {read:.2f} s read per trial, {kept:.2f} s "
          f"kept ({read / max(kept, 1e-9):.0f}x less)")


if __name__ == "__main__":
    main()
