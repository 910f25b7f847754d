"""Independent random streams from one user seed.

A trial's SAE init and a synthetic store built with the same seed must not draw the same
numbers (the decoder would start on the planted directions), so every consumer derives its own
seed from (seed, purpose, index) through numpy's SeedSequence.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream_seed(seed: int, purpose: str, index: int = 0) -> int:
    """A 63-bit seed for `purpose` (e.g. "trial", "synthetic") derived from `seed` and `index`."""
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(purpose.encode()), int(index) & 0xFFFFFFFF]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)
