"""The schema of a search-space file: its sections as strict pydantic models.

A space names the data, the fixed training settings, the sampled parameters, the objective(s),
the pruning rules, the sampler, the budget and the study. harness.sweep.space.load reads a file
against this schema and checks what the schema alone cannot (the store, k against the width).
"""

from __future__ import annotations

from typing import Any, Literal

import optuna
from pydantic import Field, field_validator, model_validator

from harness.core.activations import ACTIVATIONS, DEFAULT_ACTIVATION, OPTIONS, activation_class
from harness.core.metrics import METRICS, OBJECTIVE_METRICS
from harness.core.store import open_store
from harness.core.training.config import NOT_SAMPLED, SaeTrainingConfig
from harness.errors import SaesweepError
from harness.sweep.space.evaluation import EvaluationSection, Strict

# parameters a trial's setup resolves itself (not SaeTrainingConfig fields)
SPECIAL_PARAMS = {"expansion", "k", "k_fraction", "lr", "lr_scale", "activation", "skip",
                  *OPTIONS}
SAMPLERS: dict[str, type] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "grid": optuna.samplers.GridSampler,
}
PRUNERS: dict[str, type | None] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "none": None,
}


class SpaceError(SaesweepError):
    """An invalid search-space file; the message names the file and the key path."""


_Strict = Strict


class ParamSpec(_Strict):
    """One sampled parameter (Optuna's suggest_float / suggest_int / suggest_categorical)."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    when: list[str] | None = None
    """Sample it only for trials whose activation is one of these (a conditional parameter:
    Optuna's suggest inside a branch); None = whenever it applies."""

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        unknown = [a for a in self.when or [] if a not in ACTIVATIONS]
        if unknown or self.when == []:
            raise ValueError(f"'when' lists activations among {list(ACTIVATIONS)}, got "
                             f"{self.when}")
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("categorical takes only 'choices'")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high (and log or step), not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs both 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna)")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        if self.type == "int" and not (float(self.low).is_integer()
                                       and float(self.high).is_integer()):
            raise ValueError("int needs whole-number low and high")
        return self

    @property
    def max_value(self) -> float:
        if self.type == "categorical":
            return max(float(c) for c in self.choices or [])
        return float(self.high)  # type: ignore[arg-type]

    @property
    def min_value(self) -> float:
        if self.type == "categorical":
            return min(float(c) for c in self.choices or [])
        return float(self.low)  # type: ignore[arg-type]

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution `suggest` samples from."""
        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices)  # type: ignore[arg-type]
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high),  # type: ignore[arg-type]
                                                        log=self.log, step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high),  # type: ignore[arg-type]
                                                      log=self.log, step=self.step)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)  # type: ignore[arg-type]
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high),  # type: ignore[arg-type]
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high),  # type: ignore[arg-type]
                                   step=self.step, log=self.log)


class StudySection(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
    """Letters, digits, _ . - (not starting with a dot): it names a folder of results_dir."""
    storage: str | None = None
    """Optuna storage URL; None = a journal file results/<name>/study.journal."""
    seed: int = 0
    warm_start: list[str] = Field(default_factory=list)
    """Studies on the same activations whose complete trials a new study starts from (its
    storage, else results/<name>/study.journal): seen by the sampler, not by the budget."""


class SyntheticSection(_Strict):
    """Generate synthetic activations into the store on first use (see SyntheticSpec)."""

    d: int = Field(64, gt=0)
    n_features: int = Field(256, gt=0)
    mean_active: float = Field(5.0, gt=0)
    n_tokens: int = Field(100_000, gt=0)
    magnitude: Literal["uniform", "exponential"] = "exponential"
    magnitude_low: float = 0.0
    magnitude_high: float = 1.0
    frequency_decay: float = Field(0.75, ge=0)
    offset_norm: float = 0.0
    noise_std: float = Field(0.01, ge=0)
    seed: int = 0
    d_out: int = Field(0, ge=0)
    target_linear: float = 0.0


class DataSection(_Strict):
    store: str
    run_id: str = Field(min_length=1, pattern=r"^[^/\\]+$")
    """A folder name of the store: no '/' (nor '.' or '..')."""
    layer_signature: str = Field(min_length=1)
    target_layer_signature: str | None = Field(None, min_length=1)
    """Every trial a transcoder: it reads layer_signature, reconstructs this layer of the run."""
    max_tokens: int | None = Field(None, gt=0)
    synthetic: SyntheticSection | None = None

    @field_validator("run_id")
    @classmethod
    def _not_dots(cls, run_id: str) -> str:
        if run_id in (".", ".."):
            raise ValueError(f"run_id must name a folder of the store, got {run_id!r}")
        return run_id

    def synthetic_pending(self) -> bool:
        """Whether the synthetic activations it asks for are not generated yet (first use)."""
        return self.synthetic is not None and not (
            open_store(self.store).activation_dir(self.run_id) / "meta.json").exists()


class Objective(_Strict):
    metric: str
    """A metric of harness.core.metrics.METRICS that may be an objective."""
    direction: Literal["maximize", "minimize"]

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown objective metric {metric!r}; expected one of "
                             f"{list(OBJECTIVE_METRICS)}")
        return metric


class SamplerSection(_Strict):
    type: Literal["tpe", "random", "nsga2", "gp", "qmc", "grid"]
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the Optuna sampler (seed is derived per worker, not set here)."""


class DeadFeatureSection(_Strict):
    max_ratio: float = Field(gt=0, le=1)
    """Prune when dead_features / n_latents exceeds this ..."""
    warmup_steps: int = Field(0, ge=0)
    """... at an evaluation after this many steps."""


class R2FloorSection(_Strict):
    min_r2: float
    """Prune when held-out R² is below this ..."""
    warmup_steps: int = Field(0, ge=0)
    """... at an evaluation after this many steps."""


class PrunerSection(_Strict):
    type: Literal["median", "percentile", "successive_halving", "hyperband", "wilcoxon", "none"]
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the Optuna pruner (e.g. n_startup_trials, n_warmup_steps)."""
    dead_features: DeadFeatureSection | None = None
    r2_floor: R2FloorSection | None = None
    min_remaining: float = Field(0.25, ge=0, lt=1)
    """No rule prunes a trial once less than this share of its planned steps remains (pruning
    then saves too little); 0 = prune at any evaluation."""


class BudgetSection(_Strict):
    n_trials: int = Field(gt=0)
    """Trials for the whole study, across all workers and re-runs."""
    timeout: float | None = Field(None, gt=0)
    """Stop starting trials after this many seconds of this invocation."""
    tokens: float | None = Field(None, gt=0)
    """Training tokens for the whole study (pruned and failed trials count what they trained):
    no trial starts that would take the total past it."""
    compute: float | None = Field(None, gt=0)
    """Training compute for the whole study, in tokens x latents: no trial starts that would
    take the total past it; a rung study's plan prices fresh configurations at the space's mean
    width and promoted ones at its widest."""
    hours: float | None = Field(None, gt=0)
    """Trial hours for the whole study (the sum of the trials' wall times, on every node): no
    trial starts once the finished trials' mean would take the total past it."""


class FidelitySection(_Strict):
    """Successive halving over token budgets (harness.sweep.rungs): configurations train at
    the first budget, the best of each group are re-run at the next."""

    tokens: list[int] = Field(min_length=2)
    """Training tokens of each rung, increasing; the last is a trial's full budget."""
    reduction: int = Field(3, ge=2)
    """Each rung re-runs the best 1/reduction of the rung below, per group."""
    group_by: list[str] = Field(default_factory=list)
    """Parameters ranked apart (k: the best configuration of every k reaches the last rung);
    fresh configurations cycle through their values."""
    promote: Literal["predicted", "measured"] = "predicted"
    """How a rung's configurations are ranked for the next: by the FVU a scaling law fitted to
    the study's trials predicts on the last rung (harness.sweep.prediction; the first objective
    must be fvu or r2), or by the first objective as measured on this rung."""

    @field_validator("tokens")
    @classmethod
    def _increasing(cls, tokens: list[int]) -> list[int]:
        if tokens[0] <= 0 or any(b <= a for a, b in zip(tokens, tokens[1:], strict=False)):
            raise ValueError(f"rung budgets must be positive and increasing, got {tokens}")
        return tokens


class WandbSection(_Strict):
    mode: Literal["online", "offline", "off"] = "off"
    project: str = "saesweep"

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, mode: Any) -> Any:
        return "off" if mode is False else mode  # YAML 1.1 reads an unquoted off as false


class FaultsSection(_Strict):
    heartbeat_s: float = Field(5.0, gt=0)
    """A running trial's worker writes a heartbeat this often."""
    lease_s: float = Field(30.0, gt=0)
    """A running trial whose heartbeat is older than this is failed and re-enqueued."""
    max_retry: int = Field(2, ge=0)
    """How often one configuration is retried after its worker died."""
    checkpoint_every: int = Field(1000, ge=0)
    """A training trial writes a resumable checkpoint every this many steps (and on SIGTERM);
    its retry resumes there. 0 = only on SIGTERM."""

    @model_validator(mode="after")
    def _check(self) -> FaultsSection:
        if self.lease_s < 2 * self.heartbeat_s:
            raise ValueError(f"lease_s ({self.lease_s}) must be at least twice heartbeat_s "
                             f"({self.heartbeat_s})")
        return self


class SweepSpace(_Strict):
    """A whole sweep file."""

    study: StudySection
    data: DataSection
    training: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, ParamSpec | float | int | str | bool]
    objectives: list[Objective] = Field(min_length=1)
    sampler: SamplerSection
    pruner: PrunerSection = Field(default_factory=lambda: PrunerSection(type="none"))
    budget: BudgetSection
    fidelity: FidelitySection | None = None
    """Token-budget rungs; None = every trial trains to its full budget."""
    wandb: WandbSection = Field(default_factory=WandbSection)
    faults: FaultsSection = Field(default_factory=FaultsSection)
    results_dir: str = "results"
    artifacts: str | None = None
    """Optuna artifact store for every trial's files: a folder (a shared filesystem for several
    nodes) or s3://bucket; None = <results_dir>/<study>/artifacts."""
    lockstep: int = Field(1, ge=1)
    """Trials a worker trains together on the same batches (each batch read and moved once)."""
    workers: int = Field(1, ge=1)
    """Worker processes when neither --workers nor --devices is given."""
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    """Evaluations of each finished trial beyond the held-out split."""

    @model_validator(mode="after")
    def _evaluated_objectives(self) -> SweepSpace:
        for source, what in (("downstream", "splicing the SAE into its language model"),
                             ("sparse_probing", "sparse probing"),
                             ("absorption", "the first-letter absorption task")):
            needs = [o.metric for o in self.objectives if METRICS[o.metric].source == source]
            if needs and getattr(self.evaluation, source) is None:
                raise ValueError(f"objective(s) {needs} are measured by {what}: add "
                                 f"evaluation.{source} (docs/metrics.md)")
        return self

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        allowed = SPECIAL_PARAMS | (set(SaeTrainingConfig.field_names()) - NOT_SAMPLED)
        for name in params:
            if name not in allowed:
                raise ValueError(f"unknown parameter {name!r}; expected one of {sorted(allowed)}")
        for a, b in (("k", "k_fraction"), ("lr", "lr_scale")):
            if a in params and b in params:
                raise ValueError(f"give either {a!r} or {b!r}, not both")
        if "expansion" not in params:
            raise ValueError("'expansion' (n_latents = expansion x d) must be sampled or fixed")
        activation = params.get("activation", DEFAULT_ACTIVATION)
        sampled = isinstance(activation, ParamSpec)
        choices = (activation.choices or []) if sampled else [activation]
        if sampled and activation.type != "categorical" or not set(choices) <= {*ACTIVATIONS}:
            raise ValueError(f"'activation' must be one of {list(ACTIVATIONS)} or a "
                             f"categorical choice among them, got {choices or activation}")
        needing_k = [c for c in choices if "k" in activation_class(c).params]
        if needing_k and "k" not in params and "k_fraction" not in params:
            raise ValueError(f"'k' or 'k_fraction' must be sampled or fixed (activation "
                             f"{needing_k[0]!r} keeps k latents per token)")
        return params

    @model_validator(mode="after")
    def _activation_needs(self) -> SweepSpace:
        """Every activation the space can choose gets the parameters it needs."""
        activation = self.params.get("activation", DEFAULT_ACTIVATION)
        choices = (activation.choices or []) if isinstance(activation, ParamSpec) else [activation]
        for choice in choices:
            for need in activation_class(choice).params - {"k"}:
                spec = self.params.get(need, self.training.get(need))
                when = spec.when if isinstance(spec, ParamSpec) else None
                if spec is None or (when is not None and choice not in when):
                    raise ValueError(f"activation {choice!r} needs {need!r}: sample or fix it in "
                                     "params (or fix it in training)")
        return self

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


