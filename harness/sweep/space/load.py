"""Loading a search space: read the YAML, validate it against the schema, check the data and
the training values, and resolve each trial's parameters. Any mistake (unknown key, wrong type,
low > high, log with low <= 0, missing store or layer, k that can reach n_latents) is a
`SpaceError` naming the file, the key path and what was expected; nothing is written.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from pydantic import ValidationError

from harness.core.activations import OPTIONS, activation_class
from harness.core.loader import ActivationLoader
from harness.core.store import ActivationSource, StoreError, open_store
from harness.core.training.checks import type_error
from harness.core.training.config import LOCKSTEP_FIELDS, SaeTrainingConfig, option_types
from harness.data.synthetic import SyntheticSpec
from harness.sweep.space.schema import (
    MIN_EVAL_TOKENS,
    PRUNERS,
    SAMPLERS,
    SPECIAL_PARAMS,
    ParamSpec,
    SpaceError,
    SweepSpace,
    SyntheticSection,
)
from harness.sweep.space.yaml_file import SpaceYamlError, read_space_yaml
from harness.sweep.urls import masked


@dataclass(frozen=True)
class TrialSetup:
    """What one trial trains, resolved from its sampled parameters."""

    expansion: float
    n_latents: int
    k: int | None
    """Active latents per token; None for an activation whose L0 training sets."""
    lr: float
    config: SaeTrainingConfig
    sampled: dict[str, Any]
    activation: str = "topk"
    """The activation's registry name (harness.core.activations)."""
    activation_options: dict[str, Any] = field(default_factory=dict)
    """Its options (Matryoshka's prefixes), as sampled or fixed."""


OWNED = {"k", "k_fraction", "l0_lambda", *OPTIONS}
"""Parameters that belong to the activations that list them (k and k_fraction go with "k")."""


def applies(name: str, spec: Any, activation: str) -> bool:
    """Whether a trial whose activation is `activation` samples (or fixes) parameter `name`."""
    when = spec.when if isinstance(spec, ParamSpec) else None
    if when is not None:
        return activation in when
    if name not in OWNED:
        return True
    cls = activation_class(activation)
    owned = cls.params | set(cls.options)
    return (name in owned) or (name == "k_fraction" and "k" in owned)


@dataclass
class LoadedSpace:
    """A validated space plus what loading found out about the data."""

    space: SweepSpace
    path: Path
    d: int
    raw: dict[str, Any]

    def setup(self, trial: optuna.Trial) -> TrialSetup:
        """Sample this trial's parameters and resolve n_latents, k, lr and the config. The
        activation is sampled first; a parameter that it does not use (another activation's k,
        penalty or option, or one whose `when` leaves it out) is not sampled."""
        s = self.space
        values: dict[str, Any] = {}
        spec = s.params.get("activation", "topk")
        activation = str(spec.suggest(trial, "activation") if isinstance(spec, ParamSpec)
                         else spec)
        values["activation"] = activation
        for name, spec in s.params.items():
            if name == "activation" or not applies(name, spec, activation):
                continue
            values[name] = spec.suggest(trial, name) if isinstance(spec, ParamSpec) else spec
        if "activation" not in s.params:
            del values["activation"]
        expansion = float(values["expansion"])
        n_latents = max(1, round(expansion * self.d))
        k: int | None = None
        if activation_class(activation).uses_k:
            k = (int(values["k"]) if "k" in values
                 else max(1, round(values["k_fraction"] * n_latents)))
            if not 0 < k < n_latents:
                raise ValueError(f"k={k} must be in [1, n_latents={n_latents})")
        fields = {**s.training}
        fields.update({n: v for n, v in values.items() if n not in SPECIAL_PARAMS})
        if fields.get("l0_lambda") and "l0_lambda" not in activation_class(activation).params:
            raise ValueError(f"l0_lambda needs activation jumprelu, not {activation!r}")
        fields["max_tokens"] = s.data.max_tokens
        if "lr" in values:
            lr = float(values["lr"])
        elif "lr_scale" in values or fields.get("lr") is None:
            # the trainer's default for this size and step count, resolved here to record it
            config = SaeTrainingConfig(**{**fields, "lr": None})
            data = open_store(s.data.store).open(s.data.run_id, s.data.layer_signature)
            lr = float(values.get("lr_scale", 1.0)) * config.resolved_lr(
                n_latents, self.d, config.steps_on(data))
        else:
            lr = float(fields["lr"])
        fields["lr"] = lr
        options = {n: v for n, v in values.items() if n in OPTIONS}
        return TrialSetup(expansion=expansion, n_latents=n_latents, k=k, lr=lr,
                          config=SaeTrainingConfig(**fields), sampled=values,
                          activation=activation, activation_options=options)

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
        raw = read_space_yaml(path)
    except OSError as e:
        raise SpaceError(f"{path}: cannot read ({e.strerror or e})") from e
    except SpaceYamlError as e:
        raise SpaceError(f"{path}: {e}") from e
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = _merge(raw, overrides or {})
    try:
        space = SweepSpace.model_validate(raw)
    except ValidationError as e:
        raise SpaceError(_format_validation(path, e, raw)) from e
    _check_special(path, space)
    _check_activation_options(path, space)
    _check_training(path, space)
    _check_options(path, space)
    d = _check_data(path, space, read_heldout) if check_data else (
        space.data.synthetic.d if space.data.synthetic else 0)
    if check_data:
        _check_k(path, space, d)
    if space.lockstep > 1:
        shared = [n for n in LOCKSTEP_FIELDS if isinstance(space.params.get(n), ParamSpec)]
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


_PARAM_BRANCHES = ("ParamSpec", "float", "int", "str", "bool")  # what a params: entry may be


def _format_validation(path: Path, error: ValidationError, raw: dict[str, Any]) -> str:
    """One line per mistake. A params: entry is a mapping (a sampled parameter) or a fixed
    value, and pydantic reports a mistake in it against every one of those forms: keep the
    form the user wrote (the mapping's own errors), or one line for a value of no form."""
    lines = []
    params = raw.get("params") if isinstance(raw.get("params"), dict) else {}
    for err in error.errors():
        parts = [str(p) for p in err["loc"] if not str(p).startswith("function-after")]
        if parts[:1] == ["params"] and len(parts) == 2 and "ParamSpec" in err["msg"]:
            parts.append("ParamSpec")  # pydantic leaves the branch out of this one's path
        if len(parts) >= 3 and parts[0] == "params" and parts[2] in _PARAM_BRANCHES:
            written = params.get(parts[1])
            if isinstance(written, dict) != (parts[2] == "ParamSpec"):
                continue  # a form the user did not write
            if not isinstance(written, dict):
                lines.append(f"{path}: params.{parts[1]}: expected a number, a string, true or "
                             "false, or a mapping {type, low, high} / {type, choices} "
                             f"(got {written!r})")
                continue
            del parts[2]
        loc = ".".join(parts)
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
    hints = option_types()
    for name, spec in space.params.items():
        if name in SPECIAL_PARAMS:
            continue
        if isinstance(spec, ParamSpec) and spec.type == "float" and hints[name] in (int,
                                                                                 int | None):
            raise SpaceError(f"{path}: params.{name}: SaeTrainingConfig.{name} is a whole "
                             "number: sample it with type int or categorical")
        for value in bounding_values(spec):
            _validate_training(path, f"params.{name}", {**space.training, name: value})


def _validate_training(path: Path, where: str, values: dict[str, Any]) -> None:
    """Types by the options' one type rule (harness.core.training.checks), then ranges by
    SaeTrainingConfig itself."""
    error = type_error(values, option_types())
    if error is not None:
        key, msg, given = error
        shown = where if where.startswith("params.") else f"{where}.{key}"
        raise SpaceError(f"{path}: {shown}: {msg} (got {given!r})")
    try:
        SaeTrainingConfig(**values)
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


def _check_activation_options(path: Path, space: SweepSpace) -> None:
    """Each activation option's values build its activation (e.g. Matryoshka's prefixes)."""
    for name, owner in OPTIONS.items():
        spec = space.params.get(name)
        for value in bounding_values(spec) if spec is not None else []:
            try:
                activation_class(owner)(**{name: value})
            except (TypeError, ValueError) as e:
                raise SpaceError(f"{path}: params.{name}: {e}") from None


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
    store = open_store(data.store)
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
    if "k" not in params and "k_fraction" not in params:
        return  # no activation of the space keeps k latents (ReLU, JumpReLU)
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
