"""scripts/bench_trainer.py end to end at a tiny shape (throughput only)."""

import re

from scripts_run import run_script


def test_bench_trainer_prints_ours_beside_its_baselines():
    proc = run_script("bench_trainer.py", "--d", "16", "--n-latents", "64", "--k", "4",
                      "--batch", "128", "--steps", "2", "--rounds", "0", "--compare", "sparsify")
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["64"])
    numbers = [float(v.rstrip("x%")) for v in row.split()]
    assert all(v > 0 for v in numbers[1:4])  # harness, dense and bound tokens/s
    # sparsify's column when it is installed (it is not a dependency), else a line saying so
    assert (len(numbers) == 8) != ("sparsify is not importable" in proc.stdout)
    assert re.search(r"torch=\S+", proc.stdout)
