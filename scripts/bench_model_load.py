"""How long a named model takes to load: from its shipped file (for a GGUF model, the
dequantisation transformers does, plus saving the result to the model cache) against a load
from the model cache (harness.data.models), in one process, with the logits of both compared.

    python scripts/bench_model_load.py                 # smollm2
    python scripts/bench_model_load.py --model smollm2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from harness.data import models
from harness.data.cache import CACHE_ENV


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a named GGUF model")
    p.add_argument("--repeats", type=int, default=3, help="cached loads to time")
    args = p.parse_args()
    spec = models.named(args.model)
    if spec is None or not spec.gguf_file:
        p.error(f"--model {args.model!r}: not a named GGUF model ({list(models.NAMED_MODELS)})")
    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache  # an empty cache: the first load dequantises
        start = time.perf_counter()
        first = models.load_model(args.model)
        cold = time.perf_counter() - start
        warm = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            again = models.load_model(args.model)
            warm.append(time.perf_counter() - start)
        ids = torch.tensor([[first.bos_id or 0, *range(100, 164)]])
        with torch.no_grad():
            same = torch.equal(first.model(ids).logits, again.model(ids).logits)
    median = statistics.median(warm)
    print(f"{args.model}: from the GGUF file (dequantise + save to the cache) {cold:.1f} s; "
          f"from the cache {median:.2f} s (median of {args.repeats}); "
          f"ratio {cold / median:.0f}x; identical logits: {same}")


if __name__ == "__main__":
    main()
