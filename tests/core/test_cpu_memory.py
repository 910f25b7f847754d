"""Freed large blocks are reused instead of being mapped (and faulted in) again every step."""

import json
import platform
import subprocess
import sys
import textwrap

import pytest

# in a fresh interpreter: the setting is process-wide, and this test process trains on CPU
SCRIPT = textwrap.dedent("""
    import json, resource, statistics, sys
    import torch
    from harness import SaeTrainer, SaeTrainingConfig, TopKSae
    from harness.core.runtime import cpu_memory

    def faults_per_cycle():
        counts = []
        for _ in range(9):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            # 64 MiB, over glibc's largest default mmap threshold: allocate, touch, free
            torch.empty(16 << 20).fill_(1.0)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        # the median: a small allocation may take part of a freed block now and then, so
        # that one cycle maps fresh memory; the steady state is what a training step sees
        return statistics.median(counts)

    # a step's [B, n] float32 block is 64 MiB: the size the run keeps for reuse
    SaeTrainer(TopKSae(4096, 16, 4)).train(
        store=sys.argv[1], run_id="syn", layer_signature="synthetic", save=False,
        config=SaeTrainingConfig(max_tokens=1000, batch_size=4096, progress=False,
                                 holdout_fraction=0.1, cpu_reuse_freed_memory=False))
    opted_out = cpu_memory._applied
    default = faults_per_cycle()
    SaeTrainer(TopKSae(4096, 16, 4)).train(
        store=sys.argv[1], run_id="syn", layer_signature="synthetic", save=False,
        config=SaeTrainingConfig(max_tokens=1000, batch_size=4096, progress=False,
                                 holdout_fraction=0.1))
    print(json.dumps({"opted_out_applied": opted_out, "applied": cpu_memory._applied,
                      "default": default, "reused": faults_per_cycle()}))
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_training_on_cpu_reuses_freed_blocks(synthetic_store):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(synthetic_store)],
                          capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["opted_out_applied"] == 0  # cpu_reuse_freed_memory=False leaves glibc alone
    assert got["applied"] == (64 << 20) + (1 << 20)  # the run's [B, n] block and a margin
    # by default each 64 MiB block is mapped afresh: ~16k page faults; reused, next to none
    assert got["default"] > 10_000, got
    assert got["reused"] < got["default"] / 10, got
