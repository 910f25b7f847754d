"""scripts/bench_memory.py end to end on a tiny store it writes itself: a run's peak against its
budget, printed with the plan."""

import re

from scripts_run import run_script


def test_bench_memory_writes_a_store_and_measures_a_run_within_its_budget(tmp_path):
    store = str(tmp_path / "store")
    wrote = run_script("bench_memory.py", "--write-store", store, "--run-id", "random", "--d",
                       "64", "--store-tokens", "70000", "--kind", "codes")
    assert wrote.returncode == 0, wrote.stderr
    assert "wrote 70,000 tokens of d = 64 (codes)" in wrote.stdout
    proc = run_script("bench_memory.py", "--store", store, "--run-id", "random", "--layer",
                      "wide", "--n-latents", "128", "--k", "8", "--tokens", "8192", "--batch",
                      "1024", "--modes", "single", "--budget-gib", "1.0")
    assert proc.returncode == 0, proc.stderr
    row = re.search(r"^single\s+1\.00\s+(\d+\.\d+)\s+\d+\.\d+\s+(\d+\.\d+)", proc.stdout, re.M)
    assert row, proc.stdout
    assert 0 < float(row.group(1)) <= 1.0 and float(row.group(2)) <= 1.0  # peak within budget
    assert "memory budget 1.00 GiB:" in proc.stdout and "8,192 training tokens" in proc.stdout
