"""Host memory of training runs against their byte budget (`memory_budget`,
harness.core.runtime.memory_plan): peak anonymous and file-backed resident memory, wall time and the
time to the first training step, for one run, two concurrent runs (two sweep workers) and a
lockstep pair.

Each run trains in a process of its own, sampled from /proc/<pid>/status every 20 ms (RssAnon,
RssFile; VmHWM at its end; read_bytes from /proc/<pid>/io: what it made the disk read, 0 for
pages already in the page cache). The baseline is the budget itself: each line prints peak /
budget.

    python scripts/bench_memory.py --store /data/d2048 --run-id random --layer wide \\
        --n-latents 4096 --k 32 --tokens 200000

The stores of docs/data.md's table, written in 65,536-token fp16 shards (run "random" or "big",
layer "wide"):

    python scripts/bench_memory.py --write-store /data/d2048 --run-id random --d 2048 \\
        --store-tokens 2000000 --kind codes
    python scripts/bench_memory.py --write-store /data/d4096 --run-id big --d 4096 \\
        --store-tokens 6488064 --kind noise
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="the activation store (required)")
    p.add_argument("--run-id", help="its activation run (required)")
    p.add_argument("--layer", help="its layer signature (required)")
    p.add_argument("--n-latents", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--tokens", type=int, default=200_000,
                   help="max_train_tokens of each run; 0 = one whole epoch of the store")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--budget-gib", type=float, default=None,
                   help="memory_budget of each run in GiB (default: the harness's default, "
                        "divided among the concurrent runs)")
    p.add_argument("--modes", default="single,workers,lockstep",
                   help="comma-separated: single, workers (two concurrent runs), lockstep")
    p.add_argument("--shuffle-check", metavar="TOKENS",
                   help="instead: the held-out FVU of one epoch at each comma-separated shuffle "
                        "buffer size (tokens; 0 = the whole split in memory), same seed")
    p.add_argument("--write-store", metavar="DIR",
                   help="instead: write a store of --store-tokens tokens of width --d into DIR")
    p.add_argument("--d", type=int, default=2048, help="--write-store: the width")
    p.add_argument("--store-tokens", type=int, default=2_000_000, help="--write-store: tokens")
    p.add_argument("--kind", choices=("codes", "noise"), default="codes",
                   help="--write-store: sparse non-negative codes over 256 random directions "
                        "plus noise and a mean, or one 65,536-token block of Gaussian noise plus a "
                        "mean, rolled by a different offset in each shard (fast to write)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def write_store(base: str, run_id: str, d: int, n: int, kind: str) -> None:
    """A store of `n` fp16 tokens of width `d` (layer "wide") in 65,536-token shards."""
    import torch

    from harness.core.store import LocalStore

    gen = torch.Generator().manual_seed(0)
    shard = 65536
    if kind == "noise":
        block = (torch.randn(shard, d, generator=gen)
                 + torch.randn(d, generator=gen) * 0.5).to(torch.float16)
    else:
        block, basis = None, torch.randn(256, d, generator=gen) / 16

    def chunks():
        left, i = n, 0
        while left:
            m = min(shard, left)
            if block is not None:
                yield block[:m].roll(i * 977, dims=0)
            else:
                codes = torch.relu(torch.randn(m, 256, generator=gen) - 1.5) * 3
                x = codes @ basis + 0.05 * torch.randn(m, d, generator=gen) + 0.5
                yield x.to(torch.float16)
            left, i = left - m, i + 1

    start = time.perf_counter()
    LocalStore(base).put_activations(run_id, "wide", chunks(), shard_tokens=shard)
    print(f"wrote {n:,} tokens of d = {d} ({kind}) in {time.perf_counter() - start:.0f} s")


def child(spec: dict) -> None:
    """One training run (or a lockstep pair); prints its plan and the time of its first step."""
    import torch

    from harness.core.loader import ActivationLoader
    from harness.core.sae import TopKSae
    from harness.core.training import LockstepMember, SaeTrainer
    from harness.core.training.config import SaeTrainingConfig

    torch.set_num_threads(int(spec["threads"]))
    start = time.perf_counter()
    first: list[float] = []
    real = ActivationLoader.train_batches

    def timed(self, epoch):  # the time the first batch reaches the step
        for batch in real(self, epoch):
            if not first:
                first.append(time.perf_counter() - start)
                print(json.dumps({"plan": self.memory_plan.describe()}), flush=True)
            yield batch

    ActivationLoader.train_batches = timed
    cfg = SaeTrainingConfig(batch_size=spec["batch"], max_train_tokens=spec["tokens"] or None,
                            progress=False, memory_budget=spec["budget"], epochs=1)
    members = [LockstepMember(TopKSae(spec["n"], spec["d"], spec["k"], seed=i), cfg, save=False)
               for i in range(spec["members"])]
    SaeTrainer.train_lockstep(spec["store"], spec["run_id"], spec["layer"], members)
    print(json.dumps({"first_step_s": first[0] if first else None,
                      "wall_s": time.perf_counter() - start}), flush=True)


def shuffle_check(args: argparse.Namespace) -> None:
    """Held-out FVU after one epoch at each shuffle buffer size (0: in memory), one seed; then
    the split in memory with two other data-order seeds: the noise a change of order alone
    makes, which a buffer's effect is measured against."""
    from harness import SaeTrainer, SaeTrainingConfig, TopKSae
    from harness.core.store import open_store

    d = open_store(args.store).open(args.run_id, args.layer).d
    print(f"{'buffer tokens':>13} {'held-out FVU':>12} {'vs in memory':>12}")
    base = None
    runs = [(int(v), 0) for v in args.shuffle_check.split(",")] + [(0, 1), (0, 2)]
    for size, seed in runs:
        cfg = SaeTrainingConfig(batch_size=args.batch, progress=False, epochs=1, seed=seed,
                                shuffle_buffer_tokens=size or 1 << 30,
                                in_memory_bytes=(1 << 40) if size == 0 else 0,
                                memory_budget=1 << 40)
        sae = TopKSae(args.n_latents, d, args.k, seed=0)
        history = SaeTrainer(sae).train(store=args.store, run_id=args.run_id,
                                        layer_signature=args.layer, config=cfg, save=False)
        fvu = history["fvu"][-1]
        base = fvu if base is None else base
        name = f"in memory, order seed {seed}" if seed else (size or "in memory")
        print(f"{name:>13} {fvu:12.4f} {fvu / base:12.3f}", flush=True)


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
        with open(f"/proc/{pid}/io", encoding="ascii") as f:  # bytes it made the disk read
            for line in f:
                key, _, value = line.partition(":")
                if key == "read_bytes":
                    out[key] = int(value)
    except OSError:
        pass
    return out


def run_children(specs: list[dict]) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for spec in specs]
    peaks = [{"RssAnon": 0, "RssFile": 0, "VmHWM": 0, "read_bytes": 0} for _ in procs]
    series: list[list[tuple[float, int]]] = [[] for _ in procs]  # (time, RssAnon)
    start = time.perf_counter()

    def sample() -> None:
        while any(p.poll() is None for p in procs):
            for p, peak, seen in zip(procs, peaks, series, strict=True):
                status = _status(p.pid)
                for key, value in status.items():
                    peak[key] = max(peak[key], value)
                if "RssAnon" in status:
                    seen.append((time.perf_counter() - start, status["RssAnon"]))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results = []
    for p, peak in zip(procs, peaks, strict=True):
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a run failed (exit {p.returncode}):\n{out}")
        info: dict = {}
        for line in out.splitlines():
            if line.startswith("{"):
                info.update(json.loads(line))
        results.append({**info, **peak})
    sampler.join()
    for r, seen in zip(results, series, strict=True):  # flat memory: the halves' peaks agree
        half = seen[-1][0] / 2 if seen else 0.0
        r["first_half"] = max((a for t, a in seen if t <= half), default=0)
        r["second_half"] = max((a for t, a in seen if t > half), default=0)
    return results


def main() -> int:
    args = build_parser().parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.write_store:
        write_store(args.write_store, args.run_id or "random", args.d, args.store_tokens,
                    args.kind)
        return 0
    if not (args.store and args.run_id and args.layer):
        raise SystemExit("--store, --run-id and --layer are required")
    if args.shuffle_check:
        shuffle_check(args)
        return 0
    from harness.core.runtime.memory_plan import default_budget
    from harness.core.store import open_store

    d = open_store(args.store).open(args.run_id, args.layer).d
    cores = os.cpu_count() or 1
    base = {"store": args.store, "run_id": args.run_id, "layer": args.layer, "d": d,
            "n": args.n_latents, "k": args.k, "tokens": args.tokens, "batch": args.batch}
    print(f"d={d} n_latents={args.n_latents} k={args.k} tokens={args.tokens} "
          f"batch={args.batch}")
    print(f"{'mode':<10} {'budget GiB':>10} {'anon GiB':>9} {'file GiB':>9} {'anon/budget':>11} "
          f"{'first step s':>12} {'wall s':>7} {'read GiB':>8}  anon peak GiB, 1st / 2nd half")
    for mode in args.modes.split(","):
        runs, members = {"single": (1, 1), "workers": (2, 1), "lockstep": (1, 2)}[mode]
        budget = (int(args.budget_gib * 2**30) if args.budget_gib is not None
                  else default_budget(runs))
        specs = [{**base, "budget": budget, "members": members,
                  "threads": max(1, cores // runs)} for _ in range(runs)]
        for i, r in enumerate(run_children(specs)):
            name = mode if runs == 1 else f"{mode}[{i}]"
            print(f"{name:<10} {budget / 2**30:10.2f} {r['RssAnon'] / 2**30:9.2f} "
                  f"{r['RssFile'] / 2**30:9.2f} {r['RssAnon'] / budget:11.2f} "
                  f"{r['first_step_s']:12.1f} {r['wall_s']:7.1f} {r['read_bytes'] / 2**30:8.2f}  "
                  f"{r['first_half'] / 2**30:.2f} / {r['second_half'] / 2**30:.2f}", flush=True)
            print(f"  {r.get('plan', '')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
