"""The one record of a trial: what it trained, where, how it ended and what it measured.

The trial writes it (as the Optuna trial's user attributes, one per field, and as trial.json in
the trial folder); the sweep's printout and the report read it back with `from_frozen`. A new
measurement is a row in `harness.core.metrics.METRICS`; its record columns follow from there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from harness.core.atomic import write_json
from harness.core.metrics import METRICS

TRIAL_FILE = "trial.json"


# sources whose metrics are recorded under their own names (not final_<name>)
NAMED_SOURCES = ("truth", "downstream", "sparse_probing", "absorption")


def metric_columns() -> list[str]:
    """Record columns of the metrics table: final_<m> (and best_<m> for the ones a run can
    improve on) for held-out metrics, <m> for ground-truth, downstream, probing and absorption
    ones."""
    cols: list[str] = []
    for name, m in METRICS.items():
        if m.source == "eval":
            cols.append(f"final_{name}")
            if name in ("r2", "fvu"):
                cols.append(f"best_{name}")
        elif m.source in NAMED_SOURCES:
            cols.append(name)
    return cols


# measurements that are not metrics of the table: counts and timings of the run
RUN_COLUMNS = ("dead_features", "tokens_seen", "planned_tokens", "steps", "epochs_run",
               "n_train_tokens", "n_eval_tokens", "dead_window_tokens", "wall_time_s",
               "train_time_s", "finish_s", "finish_share", "downstream_s", "downstream_tokens",
               "sparse_probing_s", "absorption_s")


@dataclass
class TrialRecord:
    """Everything known about one trial, flat, JSON-safe."""

    number: int
    """The Optuna trial number."""
    state: str = "RUNNING"
    """RUNNING, COMPLETE, PRUNED or FAIL (Optuna's state names)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The sampled parameters, as Optuna stores them."""
    values: list[float] | None = None
    """Objective values of a complete trial, in the order of the space's objectives."""
    device: str | None = None
    """The device it trained on, as the machine names it (cuda:3, not the worker's cuda:0)."""
    host: str | None = None
    """The machine it ran on."""
    worker: int | None = None
    """Index of the worker process on that machine."""
    trial_dir: str | None = None
    """Folder of its saved SAE, config, history and trial.json."""
    expansion: float | None = None
    """n_latents / d."""
    n_latents: int | None = None
    """Latents of the SAE."""
    k: int | None = None
    """Active latents per token."""
    lr: float | None = None
    """The learning rate it trained with (resolved from lr, lr_scale or the default rule)."""
    activation: str | None = None
    """The activation's registry name (harness.core.activations)."""
    kind: str | None = None
    """"sae", "transcoder" or "skip_transcoder" (SparseAutoencoder.kind)."""
    rung: int | None = None
    """Its token-budget rung (a space's fidelity:); None outside the rungs."""
    fail_reason: str | None = None
    """Why a FAIL trial failed."""
    prune_rule: str | None = None
    """Which pruning rule stopped a PRUNED trial."""
    prune_reason: str | None = None
    """The rule's message: step, tokens and values."""
    prune_step: int | None = None
    """Step of the evaluation that pruned it."""
    prune_tokens: int | None = None
    """Training tokens seen when it was pruned."""
    prune_values: dict[str, float] | None = None
    """The values the rule compared."""
    diverged_step: int | None = None
    """Step at which its loss diverged."""
    resumed_from_step: int | None = None
    """The checkpoint step it resumed from (a retry after preemption), or None."""
    saved_to: str | None = None
    """Where the trained SAE went when its trial folder could not be written."""
    artifact_store: str | None = None
    """The Optuna artifact store its files go to once it finishes (a folder, or s3://bucket)."""
    artifacts: dict[str, str] | None = None
    """Artifact id of each uploaded file (sae_weights.safetensors, cfg.json, history.json, ...)."""
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    """final_<m>/best_<m>/<m> of the metrics table, and the run's counts (RUN_COLUMNS)."""

    # ------------------------------------------------------------------ columns
    @classmethod
    def info_columns(cls) -> list[str]:
        """Flat columns other than number, state, params, values and metrics."""
        return [f.name for f in dataclasses.fields(cls)
                if f.name not in ("number", "state", "params", "values", "metrics")]

    @classmethod
    def columns(cls) -> list[str]:
        """Every flat column the record writes as a user attribute."""
        return [*cls.info_columns(), *metric_columns(), *RUN_COLUMNS]

    # ------------------------------------------------------------------ reading values
    def get(self, column: str) -> Any:
        """A flat column's value (None when not recorded)."""
        if column in self.info_columns():
            return getattr(self, column)
        return self.metrics.get(column)

    def final(self, name: str) -> float | None:
        """A metric of the table at the end of the run."""
        source = METRICS[name].source
        column = f"final_{name}" if source == "eval" else name if source in NAMED_SOURCES else None
        value = self.get(column) if column else getattr(self, name)
        return None if value is None else float(value)

    def objective_value(self, name: str) -> float:
        value = self.final(name)
        if value is None:
            raise ValueError(f"trial {self.number} has no value of {name!r}")
        return value

    # ------------------------------------------------------------------ writing
    def user_attrs(self) -> dict[str, Any]:
        """Every column, None included: a retry inherits its predecessor's attributes, and
        writing them all resets what this run has not measured."""
        out = {name: getattr(self, name) for name in self.info_columns()}
        out.update({c: self.metrics.get(c) for c in (*metric_columns(), *RUN_COLUMNS)})
        return out

    def save(self, trial: Any, write_file: bool = True) -> str | None:
        """Write the record to the Optuna trial (and trial.json when the folder is writable).
        Returns why trial.json could not be written, or None."""
        current = trial.user_attrs
        for key, value in self.user_attrs().items():
            # only what changes: every attribute is a storage write (an RDB round trip)
            if current.get(key) != value or (value is not None and key not in current):
                trial.set_user_attr(key, value)
        if not write_file or self.trial_dir is None:
            return None
        try:
            write_json(Path(self.trial_dir) / TRIAL_FILE, self.to_json())
        except OSError as e:
            return f"{Path(self.trial_dir) / TRIAL_FILE}: {e.strerror or e}"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, "values": self.values,
                "params": self.params, **self.user_attrs()}

    # ------------------------------------------------------------------ reading back
    @classmethod
    def from_frozen(cls, t: FrozenTrial) -> TrialRecord:
        """The record of a trial as the storage holds it."""
        return cls.from_attrs(t.number, t.state.name, t.params, t.user_attrs,
                              list(t.values) if t.values else None)

    @classmethod
    def from_attrs(cls, number: int, state: str, params: dict[str, Any],
                   attrs: dict[str, Any], values: list[float] | None = None) -> TrialRecord:
        info = {name: attrs.get(name) for name in cls.info_columns()}
        info["prune_values"] = info["prune_values"] or None
        info["artifacts"] = info["artifacts"] or None
        metrics = {c: attrs.get(c) for c in (*metric_columns(), *RUN_COLUMNS)
                   if attrs.get(c) is not None}
        return cls(number=number, state=state, params=dict(params), values=values,
                   metrics=metrics, **info)

