"""Loading a search space: read the YAML, validate it against the schema, check the data and
the training values, and resolve each trial's parameters. Any mistake (unknown key, wrong type,
low > high, log with low <= 0, missing store or layer, k that can reach n_latents) is a
`SpaceError` naming the file, the key path and what was expected; nothing is written.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError

from harness.core.activations import DEFAULT_ACTIVATION, OPTIONS, activation_class
from harness.core.loader import ActivationLoader
from harness.core.recipes import default_lr
from harness.core.shape import k_for, k_problem, n_latents_for
from harness.core.store.statistics import participation_ratio
from harness.core.training.config import LOCKSTEP_FIELDS, SaeTrainingConfig
from harness.data.synthetic import SyntheticSpec
from harness.sweep.space.checks import (
    applies,
    bounding_values,
    check_activation_options,
    check_k,
    check_options,
    check_owned,
    check_special,
    check_store,
    check_training,
    check_transcoder_data,
    check_truth_objectives,
    open_data,
)
from harness.sweep.space.rungs import check_budget, check_fidelity, rung_of
from harness.sweep.space.schema import (
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
    activation: str = DEFAULT_ACTIVATION
    """The activation's registry name (harness.core.activations)."""
    activation_options: dict[str, Any] = field(default_factory=dict)
    """Its options (Matryoshka's prefixes), as sampled or fixed."""
    planned_steps: int | None = None
    """The steps it trains in full (the prune-late rule's reference)."""
    rung: int | None = None
    """Its token-budget rung (harness.sweep.rungs); None outside the rungs."""
    seed_trial: int | None = None
    """The trial number its SAE's initial weights are seeded by: a re-run at a higher rung
    starts from its configuration's first trial's weights; None = its own."""
    skip: bool = False
    """A skip-transcoder (param `skip`; only with data.target_layer_signature)."""


_UNSET = object()  # a data field the space leaves at its default

@dataclass
class LoadedSpace:
    """A validated space plus what loading found out about the data."""

    space: SweepSpace
    path: Path
    d: int
    raw: dict[str, Any]
    d_out: int = 0
    """A transcoder's target width (data.target_layer_signature); 0 for SAEs."""

    def setup(self, trial: optuna.Trial) -> TrialSetup:
        """Sample this trial's parameters and resolve n_latents, k, lr and the config. The
        activation is sampled first; a parameter that it does not use (another activation's k,
        penalty or option, or one whose `when` leaves it out) is not sampled."""
        s = self.space
        values: dict[str, Any] = {}
        spec = s.params.get("activation", DEFAULT_ACTIVATION)
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
        n_latents = n_latents_for(expansion, self.d)
        k: int | None = None
        if activation_class(activation).uses_k:
            k = k_for(n_latents, values.get("k"), values.get("k_fraction"))
            if problem := k_problem(k, n_latents):
                raise ValueError(problem)
        fields = {**s.training}
        fields.update({n: v for n, v in values.items() if n not in SPECIAL_PARAMS})
        fields["max_tokens"] = s.data.max_tokens
        rung = rung_of(trial) if s.fidelity is not None else None
        if rung is not None:
            fields["max_train_tokens"] = rung.tokens
        # the store is opened once, for the steps; the lr is resolved here, once, and the trial
        # records and trains with it (the trainer gets it as a number, not None)
        data = open_data(s)
        planned = SaeTrainingConfig(**{**fields, "lr": None})
        steps = planned.steps_on(data)
        if "lr" in values:
            lr = float(values["lr"])
        elif "lr_scale" in values or fields.get("lr") is None:
            lr = float(values.get("lr_scale", 1.0)) * default_lr(
                n_latents, self.d, steps, planned.batch_size, participation_ratio(data))
        else:
            lr = float(fields["lr"])
        fields["lr"] = lr
        options = {n: v for n, v in values.items() if n in OPTIONS}
        config = SaeTrainingConfig(**fields)
        return TrialSetup(expansion=expansion, n_latents=n_latents, k=k, lr=lr,
                          config=config, sampled=values, activation=activation,
                          activation_options=options, planned_steps=steps,
                          skip=bool(values.get("skip", False)),
                          rung=rung.rung if rung else None,
                          seed_trial=rung.root if rung else None)

    def planned_tokens(self, max_train_tokens: int | None = None) -> int:
        """The most training tokens one trial of this space plans (the token budget's price of
        a trial): the largest over its data fields' bounding values. `max_train_tokens`: the
        price at that cap (a token rung's)."""
        s = self.space
        base = {**s.training, "max_tokens": s.data.max_tokens}
        names = ("epochs", "max_train_tokens", "holdout_fraction", "batch_size")
        choices = [bounding_values(s.params[n]) if n in s.params else [base.get(n, _UNSET)]
                   for n in names]
        data = open_data(s)
        most = 0
        for combo in itertools.product(*choices):
            fields = {**base, **{n: v for n, v in zip(names, combo, strict=True)
                                 if v is not _UNSET}}
            if max_train_tokens is not None:
                fields["max_train_tokens"] = max_train_tokens
            config = SaeTrainingConfig(**fields)
            n_train = ActivationLoader(data, config.loader_config()).n_train_tokens
            most = max(most, config.planned_tokens(n_train))
        return most

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
    check_special(path, space)
    check_transcoder_data(path, space)
    check_activation_options(path, space)
    check_owned(path, space)
    check_training(path, space)
    check_options(path, space)
    check_truth_objectives(path, space)
    d, d_out = check_store(path, space, read_heldout) if check_data else (
        (space.data.synthetic.d, space.data.synthetic.d_out) if space.data.synthetic else (0, 0))
    if check_data:
        check_k(path, space, d)
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
    loaded = LoadedSpace(space=space, path=path, d=d, raw=raw, d_out=d_out)
    check_fidelity(path, loaded, check_data)
    check_budget(path, loaded, check_data)
    return loaded


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


def synthetic_spec(section: SyntheticSection) -> SyntheticSpec:
    return SyntheticSpec(**section.model_dump())
