"""scripts/bench_search.py runs a grid and the default strategy through the real CLI and ends
with the line anyone can check the target by."""

from __future__ import annotations

import json
import re

from scripts_run import run_script


def test_bench_search_scores_the_default_strategy_against_the_grid(synthetic_store, tmp_path):
    out = tmp_path / "json"
    proc = run_script("bench_search.py", "--store", str(synthetic_store), "--run-id", "syn",
                      "--layer", "synthetic", "--ks", "2,4", "--expansions", "2",
                      "--lr-scales", "1", "--tokens", "5000", "--batch-size", "256",
                      "--eval-every", "5", "--seeds", "1", "--strategies", "default",
                      "--share", "1.5", "--workers", "1", "--out", str(tmp_path / "studies"),
                      "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("grid: 2 trials, 9,728 tokens")  # 2 x 19 batches of 256
    last = re.fullmatch(r"worst best-per-k ratio: ([\d.]+); tokens vs grid: ([\d.]+)", lines[-1])
    assert last, lines[-1]
    (score,) = json.loads(out.read_text())["scores"]
    # 8 configurations at 512 tokens, then each k's best at 4,864
    assert score["trials"] == 10 and score["tokens"] == 8 * 512 + 2 * 4864
    assert set(score["per_k"]) == {"2", "4"} and float(last[1]) == round(score["worst_k"], 4)
    assert float(last[2]) == round(score["tokens"] / 9_728, 3) <= 1.5
