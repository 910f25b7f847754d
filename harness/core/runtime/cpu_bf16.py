"""Whether this CPU multiplies bf16 matrices natively, which makes bf16 autocast the faster
training step on CPU (SaeTrainingConfig.autocast_bf16=None).

With AVX512-BF16 or AMX (x86) or the BF16 extension (Arm), oneDNN runs a [4096, 384] x [384, 3072]
product in bf16 about 4x as fast as in float32 (docs/benchmarks.md); without them bf16 is
emulated and slower than float32. Read from the kernel's CPU flags, so the choice is the same on
every run on one machine and nothing is timed.
"""

from __future__ import annotations

import functools
from pathlib import Path

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""x86 (avx512_bf16, amx_bf16) and aarch64 (bf16) /proc/cpuinfo flags of native bf16 products."""


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU reports a native bf16 matrix instruction (Linux; False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return bool(BF16_FLAGS & set(value.split()))
    return False
