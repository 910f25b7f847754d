"""scripts/bench_widths.py runs as its user would and prints both crossover tables."""

from __future__ import annotations

from scripts_run import run_script


def test_bench_widths_prints_both_tables():
    proc = run_script("bench_widths.py", "--n-latents", "256", "--d", "16", "--batch", "64",
                      "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "| width | gathered s | dense s | ratio |" in out
    assert "| k | pairs s | sparse @ dense s | ratio |" in out
    assert len([line for line in out.splitlines() if line.startswith("| 128 |")]) == 1
