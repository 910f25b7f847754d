"""Test helper: small valid sweep spaces written as YAML."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


def tiny_space(store: Path, results: Path, **sections: Any) -> dict[str, Any]:
    """A fast space over the synthetic store of conftest (d=16): trials take about a second."""
    space: dict[str, Any] = {
        "study": {"name": "t", "seed": 0},
        "data": {"store": str(store), "run_id": "syn", "layer_signature": "synthetic"},
        "training": {"epochs": 2, "batch_size": 256, "eval_every": 5},
        "params": {
            "expansion": {"type": "categorical", "choices": [2, 4]},
            "k": {"type": "int", "low": 2, "high": 8},
            "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        },
        "objectives": [{"metric": "r2", "direction": "maximize"}],
        "sampler": {"type": "random"},
        "budget": {"n_trials": 4},
        "faults": {"heartbeat_s": 0.5, "lease_s": 3},
        "results_dir": str(results),
    }
    for key, value in sections.items():
        space[key] = value
    return copy.deepcopy(space)


def write_space(path: Path, space: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path
