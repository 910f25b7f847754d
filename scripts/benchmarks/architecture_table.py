"""scripts/bench_quality.py --activation: the runs that compare activations at matched L0, and
their table (scores are bench_quality.Score).

An activation with k (topk, batchtopk, matryoshka_batchtopk) trains once per L0 asked for, at
k = L0, and once at 1.25 times the largest (a BatchTopK SAE's held-out L0 is a little under k).
One whose L0 comes out of training (relu, jumprelu) trains once per value of its sparsity
penalty. Each activation's FVU at each L0 is then read off its Pareto front of held-out
(L0, FVU) by log-log interpolation, never extrapolated, as harness.report.architectures does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.core.activations import activation_class
from harness.report.data import pareto_mask

PENALTY = {"relu": "l1_lambda", "jumprelu": "l0_lambda"}
"""The penalty that sets L0 for each activation without k."""
DEFAULT_PENALTIES = {
    "relu": [2e-3, 3e-3, 4.5e-3, 7e-3, 1e-2],
    "jumprelu": [1.5e-4, 4e-4, 1e-3, 2.5e-3, 6e-3],
}
"""Penalty values meant to span L0 of about 16-128 on MiniLM layer 3 at 1M tokens."""


def parse_penalties(text: str | None) -> dict[str, list[float]]:
    """'relu=0.1,0.3;jumprelu=1e-3' -> {activation: values}, over DEFAULT_PENALTIES."""
    out = {k: list(v) for k, v in DEFAULT_PENALTIES.items()}
    for part in filter(None, (text or "").split(";")):
        name, _, values = part.partition("=")
        if name.strip() not in PENALTY:
            raise SystemExit(f"--penalties: {name!r} is not one of {sorted(PENALTY)}")
        out[name.strip()] = [float(v) for v in values.split(",")]
    return out


def architecture_recipes(activations: list[str], l0s: list[int],
                         penalties: dict[str, list[float]]) -> list[str]:
    """bench_quality recipes: `NAME:activation=...,k=...` or `...,l1_lambda=...`."""
    recipes = []
    for name in activations:
        if activation_class(name).uses_k:  # and one k above: BatchTopK's L0 falls short of k
            ks = [*l0s, round(1.25 * max(l0s))]
            recipes += [f"{name} k={k}:activation={name},k={k}" for k in ks]
        else:
            recipes += [f"{name} {PENALTY[name]}={v:g}:activation={name},{PENALTY[name]}={v!r}"
                        for v in penalties[name]]
    return recipes


def at_l0(points: list[tuple[float, float]], l0: float) -> float:
    """FVU at `l0` on the front of (L0, FVU) points; NaN outside its L0 range."""
    xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    keep = pareto_mask(xs, ys) & (xs > 0) & (ys > 0)
    order = np.argsort(xs[keep])
    x, y = np.log(xs[keep][order]), np.log(ys[keep][order])
    if not len(x) or not x[0] <= np.log(l0) <= x[-1]:
        return float("nan")
    return float(np.exp(np.interp(np.log(l0), x, y)))


def matched_l0_table(scores: list[Any], l0s: list[int]) -> str:
    """Every run (activation, setting, L0, FVU, time), then each activation's FVU at each L0 and
    its ratio to TopK's."""
    lines = ["runs:", "", "| run | L0 | FVU | wall s | finish share |", "|---|---|---|---|---|"]
    lines += [f"| {s.trainer} | {s.l0:.1f} | {s.fvu:.4f} | {s.seconds:.1f} | "
              f"{s.finish_share:.1%} |" for s in scores]
    by_activation: dict[str, list[tuple[float, float]]] = {}
    for s in scores:
        by_activation.setdefault(s.activation, []).append((s.l0, s.fvu))
    fvu = {name: [at_l0(points, l0) for l0 in l0s] for name, points in by_activation.items()}
    head = " | ".join(f"L0={l0}" for l0 in l0s)
    lines += ["", "FVU at matched L0 (interpolated on each front; nan: outside its L0 range):",
              "", f"| activation | {head} |", "|---" * (len(l0s) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |"
              for name, values in fvu.items()]
    if "topk" in fvu:
        lines += ["", "over TopK:", "", f"| activation | {head} |", "|---" * (len(l0s) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{v / t:.3f}" for v, t in zip(values, fvu["topk"],
                                                                             strict=True)) + " |"
                  for name, values in fvu.items() if name != "topk"]
    return "\n".join(lines)
