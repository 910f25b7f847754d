"""Trainer throughput against a naive dense TopK step and the hardware bound, in one process.

For each n_latents (default 3072 and 12288; d=768, k=32, batch 4096, 2 threads on CPU):
- harness: the full training step of the shared trainer (forward, MSE + L1 + AuxK, backward,
  Adam, decoder renorm and gradient projection), fed from an in-memory store;
- dense: a naive dense PyTorch step (Linear encoder, topk, scatter into [B, n], dense decoder
  matmul, autograd, Adam) -- what most TopK trainers do;
- bound: the encoder forward product x @ W_enc.T alone, the one dense product a TopK step needs;
- with --compare sparsify (when `eai-sparsify` is importable): EleutherAI sparsify's step as its
  trainer runs it (SparseCoder forward, which carries its own bf16 autocast on CUDA; FVU + AuxK
  loss; backward; gradient projection; Adam; decoder renorm), on batches already on the device;
then store-fed (streamed from disk) vs in-memory throughput and M=4 lockstep trials against 4
sequential trials of the same size (both repeated in alternating order), and peak RSS. Ratios
are what to read; absolute tokens/s depend on the machine.

    python scripts/bench_trainer.py
    python scripts/bench_trainer.py --n-latents 3072 --steps 6 --device cuda
    python scripts/bench_trainer.py --device cuda --compare sparsify --d 4096 --n-latents 131072 \
        --k 64 --rounds 0
    python scripts/bench_trainer.py --glibc-default   # without harness.core.runtime.cpu_memory
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from benchmarks.sparsify_step import sparsify_trainer

from harness import LocalStore, SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.loader import MIN_EVAL_TOKENS
from harness.core.runtime.cpu_memory import reuse_freed_blocks
from harness.core.training import LockstepMember


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _tokens_per_s(step, batches: list[torch.Tensor], device: str) -> float:  # noqa: ANN001
    """Tokens/s of `step` over batches[1:], after a warm-up step on batches[0]."""
    step(batches[0])
    _sync(device)
    start = time.perf_counter()
    for x in batches[1:]:
        step(x)
    _sync(device)
    return (len(batches) - 1) * batches[0].shape[0] / (time.perf_counter() - start)


def dense_step_tokens_per_s(d: int, n: int, k: int, batches: list[torch.Tensor],
                            device: str) -> float:
    enc = torch.nn.Linear(d, n, device=device)
    dec = torch.nn.Linear(n, d, device=device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-4)

    def step(x: torch.Tensor) -> None:
        pre = enc(x)
        vals, idx = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))
        loss = (dec(z) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _tokens_per_s(step, batches, device)


def sparsify_step_tokens_per_s(d: int, n: int, k: int, batches: list[torch.Tensor],
                               device: str) -> float:
    """EleutherAI sparsify's training step (scripts/benchmarks/sparsify_step.py), its default lr."""
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device=device,
                      dtype=torch.float32)
    return _tokens_per_s(sparsify_trainer(sae, 2e-4 / (n / 2**14) ** 0.5), batches, device)


def sparsify_importable() -> bool:
    try:
        import sparsify  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not installed here"
        return False
    return True


def _or_nan(measure, *args: object) -> float:  # noqa: ANN001
    """A baseline's tokens/s, or nan when it does not fit in the device's memory."""
    try:
        return measure(*args)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return float("nan")


def bound_tokens_per_s(d: int, n: int, batches: list[torch.Tensor], device: str) -> float:
    w = torch.randn(n, d, device=device)
    return _tokens_per_s(lambda x: x @ w.T, batches, device)


REUSE_FREED = True  # --glibc-default turns it off for every run
HOLDOUT = 0.01  # the held-out share: 1%, or enough for the trainer's MIN_EVAL_TOKENS


def with_heldout(tokens: torch.Tensor) -> torch.Tensor:
    """`tokens` with the held-out share added back (repeated rows), so the timed loop trains on
    all of `tokens`; sets HOLDOUT so that share holds at least 2 x MIN_EVAL_TOKENS."""
    global HOLDOUT
    HOLDOUT = max(0.01, 2 * MIN_EVAL_TOKENS / len(tokens))
    extra = math.ceil(len(tokens) * HOLDOUT / (1 - HOLDOUT)) + 1
    return torch.cat([tokens, tokens[torch.arange(extra) % len(tokens)]])


def _config(batch: int, device: str, **extra: object) -> SaeTrainingConfig:
    # AuxK active (a 2-batch dead window), L1 on: the full step the issue defines; b_dec starts
    # at the geometric median as by default (setup that whole-run timings include); the steps
    # are timed, so no decoder refit pass after them (its cost is in the README's Quality)
    return SaeTrainingConfig(epochs=1, batch_size=batch, lr=1e-4, l1_lambda=1e-4,
                             holdout_fraction=HOLDOUT, max_eval_tokens=batch,
                             dead_window_tokens=2 * batch, progress=False, device=device,
                             decoder_refit=False,
                             cpu_reuse_freed_memory=REUSE_FREED, **extra)


def harness_tokens_per_s(store: LocalStore, d: int, n: int, k: int, batch: int, device: str,
                         run: str = "bench", **extra: object) -> float:
    """Training-loop tokens/s of the real trainer (the final evaluation is not timed)."""
    times: list[float] = []
    history = SaeTrainer(TopKSae(n_latents=n, n_inputs=d, k=k, seed=0)).train(
        store=store, run_id=run, layer_signature="bench",
        config=_config(batch, device, **extra), callbacks=[lambda r: times.append(r.elapsed_s)],
        save=False)
    return history.tokens[-1] / times[-1]


def sequential_s(store: LocalStore, d: int, n: int, k: int, batch: int, device: str,
                 m: int = 4, **extra: object) -> float:
    """Seconds for m whole trainings one after another."""
    start = time.perf_counter()
    for i in range(m):
        SaeTrainer(TopKSae(n, d, k, seed=i)).train(store=store, run_id="bench",
                                                   layer_signature="bench",
                                                   config=_config(batch, device, **extra),
                                                   save=False)
    return time.perf_counter() - start


def lockstep_s(store: LocalStore, d: int, n: int, k: int, batch: int, device: str,
               m: int = 4, **extra: object) -> float:
    """Seconds for the same m trainings as one lockstep pack."""
    members = [LockstepMember(sae=TopKSae(n, d, k, seed=i),
                              config=_config(batch, device, **extra), save=False)
               for i in range(m)]
    start = time.perf_counter()
    SaeTrainer.train_lockstep(store, "bench", "bench", members)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--n-latents", type=int, nargs="+", default=[3072, 12288])
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=8, help="timed steps per throughput measurement "
                   "(the store-fed comparison uses three times as many)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3, help="repeats of the store-fed and the "
                   "lockstep comparisons (0: throughput only)")
    p.add_argument("--compare", choices=["sparsify"], help="also time EleutherAI sparsify's "
                   "step (pip install eai-sparsify)")
    p.add_argument("--glibc-default", action="store_true", help="leave glibc's malloc "
                   "thresholds alone (cpu_reuse_freed_memory=False), to see what reuse gives")
    args = p.parse_args()
    global REUSE_FREED
    REUSE_FREED = not args.glibc_default
    # set before any timing so the dense reference and the bound run with the same allocator
    reused = REUSE_FREED and reuse_freed_blocks()
    torch.set_num_threads(args.threads)
    d, k, bs, dev = args.d, args.k, args.batch, args.device
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn((args.steps + 1) * bs, d, generator=gen)
    batches = [b.to(dev) for b in tokens.split(bs)]
    with_sparsify = args.compare == "sparsify" and sparsify_importable()
    if args.compare == "sparsify" and not with_sparsify:
        print("# sparsify is not importable (pip install eai-sparsify): left out")
    gpu = f" ({torch.cuda.get_device_name(dev)})" if dev.startswith("cuda") else ""
    print(f"d={d} k={k} batch={bs} threads={args.threads} device={dev}{gpu} "
          f"torch={torch.__version__} freed-block reuse={'on' if reused else 'off'}")
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        # the held-out share is added back so the timed loop trains `steps + 1` full batches
        store.put_activations("bench", "bench", with_heldout(tokens), shard_tokens=bs * 2)
        print(f"{'n_latents':>9} {'harness':>9} {'dense':>9} {'bound':>9} "
              f"{'vs dense':>8} {'of bound':>8}"
              + (f" {'sparsify':>9} {'vs spars.':>9}" if with_sparsify else "")
              + (f" {'peak GiB':>8}" if gpu else "") + "   (tokens/s)")
        for n in args.n_latents:
            if gpu:
                torch.cuda.reset_peak_memory_stats(dev)
            ours = harness_tokens_per_s(store, d, n, k, bs, dev)
            peak = torch.cuda.max_memory_allocated(dev) / 2**30 if gpu else 0.0
            dense = _or_nan(dense_step_tokens_per_s, d, n, k, batches, dev)
            bound = bound_tokens_per_s(d, n, batches, dev)
            line = (f"{n:9d} {ours:9.0f} {dense:9.0f} {bound:9.0f} {ours / dense:7.2f}x "
                    f"{100 * ours / bound:7.1f}%")
            if with_sparsify:
                theirs = _or_nan(sparsify_step_tokens_per_s, d, n, k, batches, dev)
                line += f" {theirs:9.0f} {ours / theirs:8.2f}x"
            print(line + (f" {peak:8.1f}" if gpu else ""), flush=True)
        if args.rounds:
            shared_work(store, args, torch.randn((3 * args.steps + 1) * bs, d, generator=gen))
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def shared_work(store: LocalStore, args: argparse.Namespace, long_tokens: torch.Tensor) -> None:
    """Store-fed vs in-memory throughput, and lockstep vs sequential trials, `args.rounds` each
    in alternating order, on `long_tokens`."""
    d, k, bs, dev, n = args.d, args.k, args.batch, args.device, args.n_latents[0]
    store.put_activations("long", "bench", with_heldout(long_tokens), shard_tokens=bs * 2)
    print(f"store-fed (streamed from disk) vs in-memory at n={n}, {3 * args.steps} steps, "
          f"{args.rounds} rounds in alternating order:")
    stream = {"in_memory_bytes": 0, "shuffle_buffer_tokens": 4 * bs}
    shares = []
    for r in range(args.rounds):
        tps = {}
        for how in ("memory", "streamed") if r % 2 == 0 else ("streamed", "memory"):
            tps[how] = harness_tokens_per_s(store, d, n, k, bs, dev, run="long",
                                            **(stream if how == "streamed" else {}))
        shares.append(100 * tps["streamed"] / tps["memory"])
        print(f"  {tps['streamed']:.0f} vs {tps['memory']:.0f} tokens/s ({shares[-1]:.1f}%)")
    print(f"  median {statistics.median(shares):.1f}%")
    print(f"4 trials at n={n}, {args.rounds} rounds in alternating order (whole runs):")
    for label, extra in (("in-memory", {}), ("streamed", stream)):
        ratios = []
        for r in range(args.rounds):
            # alternate which goes first, so drift on a shared machine favours neither
            t = {}
            for what in ("seq", "pack") if r % 2 == 0 else ("pack", "seq"):
                t[what] = (sequential_s if what == "seq" else lockstep_s)(
                    store, d, n, k, bs, dev, **extra)
            ratios.append(t["seq"] / t["pack"])
            print(f"  {label:9s} sequential {t['seq']:6.2f} s, lockstep {t['pack']:6.2f} s "
                  f"({ratios[-1]:.2f}x)")
        print(f"  {label:9s} median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
