"""Test helpers: small valid sweep spaces written as YAML, and the study a sweep of one left."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState


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


def one_trial(store: Path, results: Path, **sections: Any) -> dict[str, Any]:
    """A space of one fixed configuration, one epoch, one trial (override any section)."""
    base = {"params": {"expansion": 2, "k": 4, "lr": 3e-3}, "budget": {"n_trials": 1},
            "wandb": {"mode": "off"}, "training": {"epochs": 1, "batch_size": 256}}
    return tiny_space(store, results, **{**base, **sections})


def load(results: Path, name: str = "t") -> optuna.Study:
    """The study a sweep left in <results>/<name>/study.journal."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / name / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def slow_space(store: Path, results: Path, n_trials: int, epochs: int = 60) -> dict[str, Any]:
    """Trials of a few seconds (60 epochs), so a test can catch one running."""
    return tiny_space(store, results, budget={"n_trials": n_trials},
                      training={"epochs": epochs, "batch_size": 256, "eval_every": 100})


def assert_settled(study: optuna.Study) -> None:
    """Nothing of the study is left RUNNING or WAITING."""
    states = Counter(t.state for t in study.get_trials())
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0, states
