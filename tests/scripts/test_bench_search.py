"""scripts/bench_search.py runs a grid, the default strategy and its anchors through the real CLI
and ends with the line anyone can check the target by; a store too small for --tokens is refused
before the grid runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from scripts_run import run_script


def test_bench_search_scores_each_strategy_against_the_grid_at_equal_compute(synthetic_store,
                                                                            tmp_path):
    out = tmp_path / "json"
    proc = run_script("bench_search.py", "--store", str(synthetic_store), "--run-id", "syn",
                      "--layer", "synthetic", "--ks", "4", "--expansions", "2,4",
                      "--lr-scales", "1", "--tokens", "5000", "--batch-size", "256",
                      "--eval-every", "5", "--seeds", "1",
                      "--strategies", "default,fixed",
                      "--share", "1.5", "--compute-share", "1.5", "--workers", "1",
                      "--out", str(tmp_path / "studies"), "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "a full trial: 4864 tokens (19 steps of 256)"
    # 2 trials of 19 batches of 256: one at 32 latents, one at 64
    assert lines[1].startswith("grid: 2 trials, 9,728 tokens, 4.67e+05 token-latents")
    last = re.fullmatch(r"worst best-per-k ratio: ([\d.]+); tokens vs grid: ([\d.]+); "
                        r"compute vs grid: ([\d.]+); coverage: ([\d.]+)", lines[-1])
    assert last, lines[-1]
    scores = {s["strategy"]: s for s in json.loads(out.read_text())["scores"]}
    default = scores["default"]
    assert set(default["per_k"]) == {"4"} and float(last[1]) == round(default["worst_k"], 4)
    assert float(last[2]) == round(default["tokens"] / 9_728, 3) <= 1.5
    assert float(last[3]) == round(default["compute_vs_grid"], 3) <= 1.5
    assert 0 <= default["coverage"] <= 1
    # the rule: one trial per k at the widest expansion
    assert scores["fixed"]["trials"] == 1 and scores["fixed"]["compute"] == 4864 * 64


def test_every_strategy_is_a_space_the_sweep_accepts(synthetic_store, tmp_path):
    """The anchors not run above (Hyperband with TPE, random, TPE) validate as the sweep reads
    them, each within the budget it is given."""
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from bench_search import build_parser
    from benchmarks.search_spaces import STRATEGIES, strategy_space

    from harness.sweep.space import load_space

    args = build_parser().parse_args([
        "--store", str(synthetic_store), "--run-id", "syn", "--layer", "synthetic",
        "--ks", "2,4", "--expansions", "2,4", "--tokens", "5000", "--batch-size", "256",
        "--out", str(tmp_path / "studies")])
    for strategy in STRATEGIES:
        path = tmp_path / f"{strategy}.yaml"
        path.write_text(yaml.safe_dump(strategy_space(args, strategy, 0, 20_000.0, 1e6)))
        loaded = load_space(path)
        assert loaded.space.budget.compute == 1e6 or strategy == "fixed", strategy
    assert load_space(tmp_path / "hyperband.yaml").space.pruner.type == "hyperband"


def test_a_store_too_small_for_the_trial_is_refused_before_the_grid(synthetic_store, tmp_path):
    proc = run_script("bench_search.py", "--store", str(synthetic_store), "--run-id", "syn",
                      "--layer", "synthetic", "--tokens", "270336",
                      "--out", str(tmp_path / "studies"))
    assert proc.returncode == 1
    assert "--tokens 270336: 1 epoch(s) of" in proc.stderr and "pass --tokens" in proc.stderr
    assert not (tmp_path / "studies").exists()
