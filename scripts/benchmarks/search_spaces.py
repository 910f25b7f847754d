"""The spaces of scripts/bench_search.py: the grid and each strategy, as the sweep reads them."""

from __future__ import annotations

import argparse
from typing import Any

STRATEGIES = ("default", "hyperband", "fixed", "random", "tpe")
WIDE = {"type": "float", "low": 0.25, "high": 4.0, "log": True}
"""The anchors' lr_scale range: the grid's."""


def base_space(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    ks = [int(k) for k in args.ks.split(",")]
    return {
        "study": {"name": name, "seed": seed},
        "data": {"store": args.store, "run_id": args.run_id, "layer_signature": args.layer},
        "training": {"epochs": args.epochs, "max_train_tokens": args.tokens,
                     "batch_size": args.batch_size, "eval_every": args.eval_every},
        "params": {"expansion": {"type": "categorical", "choices": expansions(args)},
                   "k": {"type": "categorical", "choices": ks}},
        "objectives": [{"metric": "r2", "direction": "maximize"},
                       {"metric": "l0", "direction": "minimize"}],
        "sampler": {"type": "tpe", "options": {"multivariate": True, "constant_liar": True}},
        "budget": {"n_trials": 1000},
        "workers": args.workers,
        "wandb": {"mode": "off"},
        "results_dir": str(args.out),
    }


def expansions(args: argparse.Namespace) -> list[float]:
    return [float(e) for e in args.expansions.split(",")]


def grid_space(args: argparse.Namespace) -> dict[str, Any]:
    space = base_space(args, "grid", 0)
    scales = [float(s) for s in args.lr_scales.split(",")]
    space["params"]["lr_scale"] = {"type": "categorical", "choices": scales}
    space["sampler"] = {"type": "grid"}
    space["budget"] = {"n_trials": n_cells(args) * len(scales)}
    return space


def grid_low_space(args: argparse.Namespace) -> dict[str, Any]:
    """Every (expansion, k) cell once at the default strategy's first rung and the default
    learning rate: with the grid, how each cell's FVU moves with tokens (the scaling law's
    terms in T)."""
    space = base_space(args, "grid_low", 0)
    space["training"]["max_train_tokens"] = first_rung(args)
    space["params"]["lr_scale"] = 1.0
    space["sampler"] = {"type": "grid"}
    space["budget"] = {"n_trials": n_cells(args)}
    return space


def n_cells(args: argparse.Namespace) -> int:
    return len(args.ks.split(",")) * len(args.expansions.split(","))


def first_rung(args: argparse.Namespace) -> int:
    """The default strategy's first rung: an eighth of a trial, in whole batches."""
    return max(args.batch_size, args.tokens // 8 // args.batch_size * args.batch_size)


def strategy_space(args: argparse.Namespace, strategy: str, seed: int, tokens: float | None,
                   compute: float) -> dict[str, Any]:
    """One strategy's study at a budget of `tokens` training tokens and `compute` tokens x
    latents (the default strategy's are shares of the grid's; each anchor's, what the default
    strategy spent at the same seed)."""
    space = base_space(args, f"{strategy}_s{seed}", seed)
    space["budget"].update(tokens=tokens, compute=compute)
    if strategy == "default":  # the shipped spaces' strategy
        low, high = (float(v) for v in args.prior.split(","))
        space["params"]["lr_scale"] = {"type": "float", "low": low, "high": high, "log": True}
        space["training"].pop("max_train_tokens")
        space["fidelity"] = {"tokens": [first_rung(args), args.tokens], "reduction": 4,
                             "group_by": ["k"]}
    elif strategy == "hyperband":
        # Optuna's HyperbandPruner with TPE, continuation as Optuna intends: every trial planned
        # at the full budget and stopped part-way; Optuna prunes single-objective studies only
        space["params"]["lr_scale"] = WIDE
        space["objectives"] = space["objectives"][:1]
        steps = args.tokens // args.batch_size
        space["training"]["eval_every"] = max(1, steps // 16)
        space["pruner"] = {"type": "hyperband", "min_remaining": 0.0,
                           "options": {"min_resource": max(1, steps // 16), "max_resource": steps,
                                       "reduction_factor": 3}}
    elif strategy == "fixed":
        # the rule: one full trial per k at the widest expansion and the default learning rate
        space["params"]["expansion"] = max(expansions(args))
        space["params"]["lr_scale"] = 1.0
        space["sampler"] = {"type": "grid"}
        space["budget"] = {"n_trials": len(args.ks.split(","))}
    else:
        space["params"]["lr_scale"] = WIDE
        if strategy == "random":
            space["sampler"] = {"type": "random"}
    return space
