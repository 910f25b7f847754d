"""Statistics of a stored activation run that the default recipe reads.

`participation_ratio`: (tr C)^2 / ||C||_F^2 of the activations' covariance C, the number of
dimensions the variance effectively spreads over. A residual stream with a massive-activation
dimension (SmolLM2: one of 576 dimensions holds over half the variance) has a ratio of 2-3; a
LayerNorm'd encoder's (MiniLM layer 3), about 59 of 384. The default learning-rate rule takes it
as an input (harness.core.recipes). It is read from the run's first tokens in store order, the
same for the trainer and the sweep, and kept per source.
"""

from __future__ import annotations

import torch

from harness.core.store.pairs import PairedSource
from harness.core.store.source import ActivationSource

SAMPLE_TOKENS = 16_384
"""Tokens the ratio is measured on (from the start of the run, in store order)."""
CHUNK = 2048
"""Rows read at a time."""


def participation_ratio(source: ActivationSource, tokens: int = SAMPLE_TOKENS) -> float:
    """The participation ratio of the first `tokens` tokens of `source` (at least 1). Read in
    pieces of CHUNK rows into running sums, so that it holds a d x d matrix and one piece."""
    if isinstance(source, PairedSource):  # a transcoder's: of what its encoder reads
        return participation_ratio(source.input, tokens)
    if source.participation is not None:
        return source.participation
    total = torch.zeros(source.d, dtype=torch.float64)
    gram = torch.zeros(source.d, source.d, dtype=torch.float64)
    have = 0
    for i, shard in enumerate(source.shards):
        for start in range(0, shard.n_tokens, CHUNK):
            if have >= tokens:
                break
            take = min(CHUNK, shard.n_tokens - start, tokens - have)
            x = source.read_piece(i, start, start + take).to(torch.float64)
            total += x.sum(dim=0)
            gram.addmm_(x.T, x)
            have += take
    ratio = 1.0
    if have:
        mean = total / have
        cov = gram / have - torch.outer(mean, mean)
        frob = float((cov * cov).sum())
        ratio = max(1.0, float(cov.trace()) ** 2 / frob) if frob > 0 else 1.0
    source.participation = ratio
    return ratio
