"""Declarative search spaces: one YAML file describes one sweep, validated before anything runs.

A space names the data, the fixed training settings, the sampled parameters, the objective(s),
the pruning rules, the sampler, the budget and the study. Any mistake (unknown key, wrong type,
low > high, log with low <= 0, missing store or layer, k that can reach n_latents) is a
`SpaceError` naming the file, the key path and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from harness.core.loader import ActivationLoader
from harness.core.metrics import METRICS, OBJECTIVE_METRICS
from harness.core.sae import ACTIVATIONS
from harness.core.store import ActivationSource, LocalStore, StoreError
from harness.core.train import DATA_FIELDS, SaeTrainingConfig
from harness.data.synthetic import SyntheticSpec
from harness.evaluate.downstream import DownstreamConfig
from harness.sweep.urls import masked

# lr = 2e-4 / sqrt(n_latents / 2**14): the scaling rule of sparsify and dictionary_learning
SPECIAL_PARAMS = {"expansion", "k", "k_fraction", "lr", "lr_scale", "activation"}
# training fields that belong to the harness, not to the search
NOT_SAMPLED = {"device", "progress", "use_wandb", "wandb_project", "wandb_run_name", "wandb_mode",
               "wandb_dir", "wandb_group", "wandb_job_type", "max_tokens"}
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


MIN_EVAL_TOKENS = 64  # fewer held-out tokens make FVU and L0 noise, not a measurement


class SpaceError(Exception):
    """An invalid search-space file; the message names the file and the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    """One sampled parameter (Optuna's suggest_float / suggest_int / suggest_categorical)."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
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


class DataSection(_Strict):
    store: str
    run_id: str = Field(min_length=1, pattern=r"^[^/\\]+$")
    """A folder name of the store: no '/' (nor '.' or '..')."""
    layer_signature: str = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0)
    synthetic: SyntheticSection | None = None

    @field_validator("run_id")
    @classmethod
    def _not_dots(cls, run_id: str) -> str:
        if run_id in (".", ".."):
            raise ValueError(f"run_id must name a folder of the store, got {run_id!r}")
        return run_id


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


class BudgetSection(_Strict):
    n_trials: int = Field(gt=0)
    """Trials for the whole study, across all workers and re-runs."""
    timeout: float | None = Field(None, gt=0)
    """Stop starting trials after this many seconds of this invocation."""


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


class DownstreamSection(_Strict):
    """Splice every finished trial's SAE into its language model (harness.evaluate)."""

    model: str = Field(min_length=1)
    """A named causal LM (smollm2), a local folder or a hub id: the model the store was
    captured from."""
    layer: str = Field(min_length=1)
    """The hook point, as captured (e.g. model.layers.6)."""
    text: str = DownstreamConfig.text
    """A corpus name, a folder of .txt files or a file of blank-line separated documents: text
    the SAEs were not trained on."""
    windows: int = Field(DownstreamConfig.windows, gt=0)
    """Evaluation windows (the first N of the text)."""
    seq_len: int = Field(DownstreamConfig.seq_len, ge=2)
    """Text tokens per window (the BOS comes in front)."""
    batch_windows: int = Field(DownstreamConfig.batch_windows, gt=0)
    """Windows per forward pass."""
    every: int | None = Field(None, gt=0)
    """Also evaluate during training, at the first evaluation at or past every this many steps
    (so a pruner can use it); None = only the finished SAE."""

    def config(self, device: str = "cpu") -> DownstreamConfig:
        return DownstreamConfig(device=device, **self.model_dump(exclude={"every"}))


class EvaluationSection(_Strict):
    downstream: DownstreamSection | None = None


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
    def _downstream_objectives(self) -> SweepSpace:
        needs = [o.metric for o in self.objectives if METRICS[o.metric].source == "downstream"]
        if needs and self.evaluation.downstream is None:
            raise ValueError(f"objective(s) {needs} are measured by splicing the SAE into its "
                             "language model: add evaluation.downstream (model, layer, ...)")
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
        if "k" not in params and "k_fraction" not in params:
            raise ValueError("'k' or 'k_fraction' must be sampled or fixed")
        activation = params.get("activation")
        if activation is not None:
            sampled = isinstance(activation, ParamSpec)
            choices = (activation.choices or []) if sampled else [activation]
            if sampled and activation.type != "categorical" or not set(choices) <= {*ACTIVATIONS}:
                raise ValueError(f"'activation' must be one of {list(ACTIVATIONS)} or a "
                                 f"categorical choice among them, got {choices or activation}")
        return params

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


@dataclass(frozen=True)
class TrialSetup:
    """What one trial trains, resolved from its sampled parameters."""

    expansion: float
    n_latents: int
    k: int
    lr: float
    config: SaeTrainingConfig
    sampled: dict[str, Any]
    activation: str = "topk"
    """TopK per token, or BatchTopK over the batch (harness.core.sae)."""


@dataclass
class LoadedSpace:
    """A validated space plus what loading found out about the data."""

    space: SweepSpace
    path: Path
    d: int
    raw: dict[str, Any]

    def setup(self, trial: optuna.Trial) -> TrialSetup:
        """Sample this trial's parameters and resolve n_latents, k, lr and the config."""
        s = self.space
        values: dict[str, Any] = {}
        for name, spec in s.params.items():
            values[name] = spec.suggest(trial, name) if isinstance(spec, ParamSpec) else spec
        expansion = float(values["expansion"])
        n_latents = max(1, round(expansion * self.d))
        k = int(values["k"]) if "k" in values else max(1, round(values["k_fraction"] * n_latents))
        if not 0 < k < n_latents:
            raise ValueError(f"k={k} must be in [1, n_latents={n_latents})")
        fields = {**s.training}
        fields.update({n: v for n, v in values.items() if n not in SPECIAL_PARAMS})
        fields["max_tokens"] = s.data.max_tokens
        if "lr" in values:
            lr = float(values["lr"])
        elif "lr_scale" in values or fields.get("lr") is None:
            # the trainer's default for this size and step count, resolved here to record it
            config = SaeTrainingConfig(**{**fields, "lr": None})
            data = LocalStore(s.data.store).open(s.data.run_id, s.data.layer_signature)
            lr = float(values.get("lr_scale", 1.0)) * config.resolved_lr(
                n_latents, self.d, config.steps_on(data))
        else:
            lr = float(fields["lr"])
        fields["lr"] = lr
        return TrialSetup(expansion=expansion, n_latents=n_latents, k=k, lr=lr,
                          config=SaeTrainingConfig(**fields), sampled=values,
                          activation=str(values.get("activation", "topk")))

    def raw_masked(self) -> dict[str, Any]:
        """The space as given, with a storage URL's password replaced by *** (what is written
        to space.resolved.yaml and the study's attributes)."""
        raw = copy.deepcopy(self.raw)
        study = raw.get("study")
        if isinstance(study, dict) and isinstance(study.get("storage"), str):
            study["storage"] = masked(study["storage"])
        return raw

    def grid(self) -> dict[str, list[Any]]:
        """GridSampler's search space: every sampled parameter must be categorical."""
        out = {}
        for name, spec in self.space.params.items():
            if isinstance(spec, ParamSpec):
                out[name] = list(spec.choices or [])
        return out


def load_space(path: str | Path, overrides: dict[str, Any] | None = None,
               check_data: bool = True, read_heldout: bool = True) -> LoadedSpace:
    """Read, validate and check a space file; raises SpaceError (nothing is written).

    `overrides` (e.g. from the command line) is merged into the file's mapping, section by
    section, before validation, so an override is checked exactly like the file.
    `read_heldout=False` skips reading the held-out split to check it can be evaluated (workers:
    the sweep checked it before starting them).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SpaceError(f"{path}: cannot read ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise SpaceError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = _merge(raw, overrides or {})
    try:
        space = SweepSpace.model_validate(raw)
    except ValidationError as e:
        raise SpaceError(_format_validation(path, e)) from e
    _check_special(path, space)
    _check_training(path, space)
    _check_options(path, space)
    d = _check_data(path, space, read_heldout) if check_data else (
        space.data.synthetic.d if space.data.synthetic else 0)
    if check_data:
        _check_k(path, space, d)
    if space.lockstep > 1:
        shared = [n for n in DATA_FIELDS if isinstance(space.params.get(n), ParamSpec)]
        if shared:
            raise SpaceError(f"{path}: params.{shared[0]}: lockstep trials share one data "
                             f"stream, so {shared} cannot be sampled when lockstep > 1")
    if space.sampler.type == "grid":
        for name, spec in space.params.items():
            if isinstance(spec, ParamSpec) and spec.type != "categorical":
                raise SpaceError(f"{path}: params.{name}: the grid sampler needs categorical "
                                 f"parameters, got {spec.type}")
    return LoadedSpace(space=space, path=path, d=d, raw=raw)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_validation(path: Path, error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        loc = loc.replace(".ParamSpec", "").replace(".float", "").replace(".int", "")
        given = err.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{path}: {loc or '<top>'}: {err['msg']}{shown}")
    return "\n".join(dict.fromkeys(lines))


def _check_training(path: Path, space: SweepSpace) -> None:
    """Every training value (in `training:` and every value a sampled training parameter can
    take) type-checked strictly against SaeTrainingConfig, then range-checked by it."""
    known = set(SaeTrainingConfig.field_names())
    for key in space.training:
        if key not in known:
            raise SpaceError(f"{path}: training.{key}: unknown SaeTrainingConfig field; known: "
                             f"{sorted(known)}")
        if key == "max_tokens":
            raise SpaceError(f"{path}: training.max_tokens: set it as data.max_tokens")
        if key in space.params:
            raise SpaceError(f"{path}: training.{key}: also given under params; give it once")
    _validate_training(path, "training", space.training)
    hints = typing.get_type_hints(SaeTrainingConfig)
    for name, spec in space.params.items():
        if name in SPECIAL_PARAMS:
            continue
        if isinstance(spec, ParamSpec) and spec.type == "float" and hints[name] in (int,
                                                                                 int | None):
            raise SpaceError(f"{path}: params.{name}: SaeTrainingConfig.{name} is a whole "
                             "number: sample it with type int or categorical")
        for value in bounding_values(spec):
            _validate_training(path, f"params.{name}", {**space.training, name: value})


@functools.cache
def _training_model() -> type[BaseModel]:
    """SaeTrainingConfig as a strict pydantic model: 2.5 is no int, "yes" no bool."""
    hints = typing.get_type_hints(SaeTrainingConfig)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], f.default if f.default is not dataclasses.MISSING else ...)
        for f in dataclasses.fields(SaeTrainingConfig)}
    return create_model("TrainingSection", __config__=ConfigDict(extra="forbid", strict=True),
                        **fields)


def _validate_training(path: Path, where: str, values: dict[str, Any]) -> None:
    tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        _training_model().model_validate(tuples)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        shown = where if where.startswith("params.") else f"{where}.{key}"
        raise SpaceError(f"{path}: {shown}: {err['msg']} (got {err.get('input')!r})") from e
    try:
        SaeTrainingConfig(**tuples)
    except (TypeError, ValueError) as e:
        raise SpaceError(f"{path}: {where}: {e}") from e


def bounding_values(spec: ParamSpec | float | int | str | bool) -> list[Any]:
    """The values a parameter can take that bound its range: a fixed value, the choices, or
    low and high (as ints for an int parameter)."""
    if not isinstance(spec, ParamSpec):
        return [spec]
    if spec.type == "categorical":
        return list(spec.choices or [])
    cast = int if spec.type == "int" else float
    return [cast(spec.low), cast(spec.high)]  # type: ignore[arg-type]


# what each special parameter's values must be: (check, expected)
_SPECIAL_CHECKS: dict[str, tuple[Any, str]] = {
    "expansion": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "k": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
          "a whole number >= 1"),
    "k_fraction": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "lr_scale": (lambda v: _is_number(v) and v > 0, "a number > 0"),
}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_special(path: Path, space: SweepSpace) -> None:
    for name, (ok, expected) in _SPECIAL_CHECKS.items():
        spec = space.params.get(name)
        if spec is None:
            continue
        if name == "k" and isinstance(spec, ParamSpec) and spec.type == "float":
            raise SpaceError(f"{path}: params.k: k is a whole number: sample it with type int "
                             "or categorical")
        for value in bounding_values(spec):
            if not ok(value):
                raise SpaceError(f"{path}: params.{name}: expected {expected}, got {value!r}")


def _check_options(path: Path, space: SweepSpace) -> None:
    for section, table, kind in (("sampler", SAMPLERS, space.sampler.type),
                                 ("pruner", PRUNERS, space.pruner.type)):
        cls = table.get(kind)
        options = getattr(space, section).options
        if cls is None:
            if options:
                raise SpaceError(f"{path}: {section}.options: {kind!r} takes no options")
            continue
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "seed"}
        for key in options:
            if key not in accepted:
                raise SpaceError(f"{path}: {section}.options.{key}: not an option of "
                                 f"{cls.__name__}; accepted: {sorted(accepted)}")


def _check_data(path: Path, space: SweepSpace, read_heldout: bool = True) -> int:
    data = space.data
    store = LocalStore(data.store)
    try:
        source = store.open(data.run_id, data.layer_signature)
        if read_heldout:
            _check_evaluable(path, space, source)
        return source.d
    except StoreError as e:
        if data.synthetic is not None and not (store.activation_dir(data.run_id)
                                               / "meta.json").exists():
            return data.synthetic.d  # generated on first use
        key = "data.layer_signature" if "layer" in str(e) else "data.run_id"
        raise SpaceError(f"{path}: {key}: {e}") from e


def _check_evaluable(path: Path, space: SweepSpace, source: ActivationSource) -> None:
    """Refuse data whose held-out split cannot give a meaningful FVU: too few tokens, or no
    variance (FVU divides by it). Only the held-out tokens are read."""
    config = SaeTrainingConfig(**{**space.training, "max_tokens": space.data.max_tokens})
    loader = ActivationLoader(source, config.loader_config())
    n_eval = min(loader.n_heldout_tokens, config.max_eval_tokens)
    where = f"{path}: data: run {space.data.run_id!r} layer {source.layer_signature!r}"
    if n_eval < MIN_EVAL_TOKENS:
        raise SpaceError(f"{where}: only {n_eval} held-out token(s) of {loader.n_tokens} "
                         f"(holdout_fraction {config.holdout_fraction:g}); the held-out metrics "
                         f"need at least {MIN_EVAL_TOKENS}: use a larger store or "
                         "training.holdout_fraction")
    x = loader.eval_tokens().to(torch.float64)
    if not float(x.var(dim=0, unbiased=False).sum()) > 0:
        raise SpaceError(f"{where}: the held-out activations have zero variance (every token "
                         "is the same vector), so FVU is undefined; check the capture")


def _check_k(path: Path, space: SweepSpace, d: int) -> None:
    params = space.params
    expansion = params["expansion"]
    min_exp = expansion.min_value if isinstance(expansion, ParamSpec) else float(expansion)
    if min_exp <= 0:
        raise SpaceError(f"{path}: params.expansion: must be > 0, got {min_exp}")
    min_latents = max(1, round(min_exp * d))
    if "k" in params:
        k = params["k"]
        max_k = k.max_value if isinstance(k, ParamSpec) else float(k)
        min_k = k.min_value if isinstance(k, ParamSpec) else float(k)
        if min_k < 1:
            raise SpaceError(f"{path}: params.k: must be >= 1, got {min_k:g}")
        if max_k >= min_latents:
            raise SpaceError(f"{path}: params.k: k can reach {max_k:g} but n_latents can be as "
                             f"small as {min_latents} (expansion {min_exp:g} x d={d}); need "
                             "k < n_latents")
    else:
        frac = params["k_fraction"]
        lo = frac.min_value if isinstance(frac, ParamSpec) else float(frac)
        hi = frac.max_value if isinstance(frac, ParamSpec) else float(frac)
        if not (lo > 0 and hi < 1):
            raise SpaceError(f"{path}: params.k_fraction: must lie in (0, 1), got "
                             f"[{lo:g}, {hi:g}]")
        if round(hi * min_latents) >= min_latents:  # the trial rounds k = k_fraction x n
            raise SpaceError(f"{path}: params.k_fraction: {hi:g} x n_latents rounds to "
                             f"{round(hi * min_latents)} = n_latents when n_latents is "
                             f"{min_latents} (expansion {min_exp:g} x d={d}); need k < n_latents")


def synthetic_spec(section: SyntheticSection) -> SyntheticSpec:
    return SyntheticSpec(**section.model_dump())
