"""Training throughput of the harness's SAE step against a plain dense PyTorch TopK step.

Both run in this process on the same data and shapes, so the ratio is what to read (absolute
tokens/s depend on the machine). The harness figure goes through the real trainer
(SaeTrainer.train on a LocalStore: data loading, loss, AuxK, Adam, decoder renorm, evaluation
excluded from the timed steps by using one evaluation at the very end).

    python scripts/bench_trainer.py                         # d=768, n=3072, k=32, batch 4096
    python scripts/bench_trainer.py --n-latents 12288 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch
import torch.nn.functional as F

from harness import LocalStore, SaeTrainer, SaeTrainingConfig, TopKSae


def dense_reference_step(d: int, n: int, k: int, x_batches: list[torch.Tensor]) -> float:
    """Naive TopK step: Linear encoder, topk, scatter to dense [B, n], dense decoder, Adam."""
    enc = torch.nn.Linear(d, n)
    dec = torch.nn.Linear(n, d)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-4)

    def step(x: torch.Tensor) -> None:
        pre = enc(x)
        vals, idx = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))
        loss = (dec(z) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(x_batches[0])  # warm-up
    start = time.perf_counter()
    for x in x_batches[1:]:
        step(x)
    return (len(x_batches) - 1) * x_batches[0].shape[0] / (time.perf_counter() - start)


def harness_tokens_per_s(store: LocalStore, d: int, n: int, k: int, batch: int,
                         n_batches: int) -> float:
    sae = TopKSae(n_latents=n, n_inputs=d, k=k, seed=0)
    cfg = SaeTrainingConfig(epochs=1, batch_size=batch, lr=1e-4, holdout_fraction=0.01,
                            max_eval_tokens=batch, b_dec_init="mean", progress=False,
                            dead_window_tokens=batch * 2)  # AuxK active, as in a long run
    times: list[float] = []

    def timer(result) -> None:  # noqa: ANN001 - EvalResult
        times.append(result.elapsed_s)

    history = SaeTrainer(sae).train(store=store, run_id="bench", layer_signature="bench",
                                    config=cfg, callbacks=[timer], save=False)
    # elapsed_s at the final evaluation covers the steps only (evaluation runs after it)
    return history.tokens[-1] / times[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--n-latents", type=int, default=3072)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--batches", type=int, default=12, help="timed steps per measurement")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    d, n, k, bs = args.d, args.n_latents, args.k, args.batch

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn((args.batches + 1) * bs, d, generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        # the held-out 1% comes out of the store, so add it back to keep `batches` full steps
        store.put_activations("bench", "bench", torch.cat([tokens, tokens[: bs]]))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ours = harness_tokens_per_s(store, d, n, k, bs, args.batches)
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dense = dense_reference_step(d, n, k, list(tokens.split(bs)))
    print(f"shape: d={d} n_latents={n} k={k} batch={bs} threads={args.threads} "
          f"device=cpu torch={torch.__version__}")
    print(f"harness trainer step : {ours:10.0f} tokens/s")
    print(f"dense reference step : {dense:10.0f} tokens/s")
    print(f"ratio harness/dense  : {ours / dense:10.2f}x")
    print(f"peak RSS             : {rss_after / 1024:10.0f} MiB "
          f"(before training {rss_before / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
