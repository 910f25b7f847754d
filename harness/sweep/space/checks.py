"""The checks a space passes after its schema: parameter values, activation options, training
values against SaeTrainingConfig, sampler and pruner options, the data, and k against the width.
Each raises SpaceError naming the file, the key path and what was expected."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

from harness.core.activations import (
    ACTIVATIONS,
    DEFAULT_ACTIVATION,
    OPTIONS,
    activation_class,
    check_penalty,
)
from harness.core.loader import ActivationLoader
from harness.core.metrics import METRICS
from harness.core.shape import k_for, k_problem, n_latents_for
from harness.core.store import ActivationSource, PairedSource, StoreError, open_store
from harness.core.training.checks import type_error
from harness.core.training.config import SaeTrainingConfig, option_types
from harness.data.synthetic import TARGET_SUFFIX, has_ground_truth
from harness.sweep.space.schema import (
    PRUNERS,
    SAMPLERS,
    SPECIAL_PARAMS,
    ParamSpec,
    SpaceError,
    SweepSpace,
)


def check_training(path: Path, space: SweepSpace) -> None:
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


# what each special parameter's values must be: (check, expected)
_SPECIAL_CHECKS: dict[str, tuple[Any, str]] = {
    "expansion": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "k": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
          "a whole number >= 1"),
    "k_fraction": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "lr_scale": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "skip": (lambda v: isinstance(v, bool), "true or false (a skip-transcoder's linear path)"),
}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_transcoder_data(path: Path, space: SweepSpace) -> None:
    """A skip path needs a target; synthetic targets need one, under the name they are
    written as."""
    data = space.data
    if "skip" in space.params and data.target_layer_signature is None:
        raise SpaceError(f"{path}: params.skip: a skip path needs a transcoder: set "
                         "data.target_layer_signature (the layer it reconstructs)")
    if data.synthetic is not None and bool(data.synthetic.d_out) != bool(
            data.target_layer_signature):
        raise SpaceError(f"{path}: data.synthetic.d_out: synthetic targets (d_out > 0) go with "
                         "data.target_layer_signature, and the one needs the other")
    if (data.synthetic is not None and data.synthetic.d_out
            and data.target_layer_signature != data.layer_signature + TARGET_SUFFIX):
        raise SpaceError(f"{path}: data.target_layer_signature: synthetic targets are written as "
                         f"layer {data.layer_signature + TARGET_SUFFIX!r}, got "
                         f"{data.target_layer_signature!r}")


def check_special(path: Path, space: SweepSpace) -> None:
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


def check_activation_options(path: Path, space: SweepSpace) -> None:
    """Each activation option's values build its activation (e.g. Matryoshka's prefixes)."""
    for name, owner in OPTIONS.items():
        spec = space.params.get(name)
        for value in bounding_values(spec) if spec is not None else []:
            try:
                activation_class(owner)(**{name: value})
            except (TypeError, ValueError) as e:
                raise SpaceError(f"{path}: params.{name}: {e}") from None


def check_options(path: Path, space: SweepSpace) -> None:
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


def check_truth_objectives(path: Path, space: SweepSpace) -> None:
    """An objective measured against planted features (mmcs, firing_f1) needs a store that
    has them: synthetic data generated here."""
    needs = [o.metric for o in space.objectives if METRICS[o.metric].source == "truth"]
    data = space.data
    if needs and data.synthetic is None and not has_ground_truth(data.store, data.run_id):
        raise SpaceError(f"{path}: objectives: {needs} are measured against planted features, "
                         f"but run {data.run_id!r} of {data.store} has none (no "
                         "ground_truth.safetensors): use data.synthetic, or another objective")


def open_data(space: SweepSpace) -> ActivationSource:
    """The space's data: its layer, or (a transcoder's) its layer and target side by side."""
    data = space.data
    store = open_store(data.store)
    if data.target_layer_signature is None:
        return store.open(data.run_id, data.layer_signature)
    return store.open_pair(data.run_id, data.layer_signature, data.target_layer_signature)


def check_store(path: Path, space: SweepSpace, read_heldout: bool = True) -> tuple[int, int]:
    """(the input's width, a transcoder's target width or 0), the data checked."""
    data = space.data
    try:
        source = open_data(space)
        if read_heldout:
            _check_evaluable(path, space, source)
        return (source.n_inputs, source.n_outputs) if isinstance(source, PairedSource) else (
            source.d, 0)
    except StoreError as e:
        if data.synthetic is not None and data.synthetic_pending():
            return data.synthetic.d, data.synthetic.d_out  # generated on first use
        key = ("data.target_layer_signature" if data.target_layer_signature
               and data.target_layer_signature in str(e) and "not aligned" not in str(e)
               else "data.layer_signature" if "layer" in str(e) else "data.run_id")
        raise SpaceError(f"{path}: {key}: {e}") from e


def _check_evaluable(path: Path, space: SweepSpace, source: ActivationSource) -> None:
    """Refuse data whose held-out split cannot give a meaningful FVU (the trainer's own check,
    made before anything runs). Only the held-out tokens are read."""
    config = SaeTrainingConfig(**{**space.training, "max_tokens": space.data.max_tokens})
    problem = ActivationLoader(source, config.loader_config()).heldout_problem()
    if problem:
        raise SpaceError(f"{path}: data: run {space.data.run_id!r} layer "
                         f"{source.layer_signature!r}: {problem}")


def check_k(path: Path, space: SweepSpace, d: int) -> None:
    params = space.params
    expansion = params["expansion"]
    min_exp = expansion.min_value if isinstance(expansion, ParamSpec) else float(expansion)
    if min_exp <= 0:
        raise SpaceError(f"{path}: params.expansion: must be > 0, got {min_exp}")
    min_latents = n_latents_for(min_exp, d)
    if "k" not in params and "k_fraction" not in params:
        return  # no activation of the space keeps k latents (ReLU, JumpReLU)
    if "k" in params:
        k = params["k"]
        max_k = k.max_value if isinstance(k, ParamSpec) else float(k)
        min_k = k.min_value if isinstance(k, ParamSpec) else float(k)
        if min_k < 1:
            raise SpaceError(f"{path}: params.k: must be >= 1, got {min_k:g}")
        if k_problem(int(max_k), min_latents):
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
        top = k_for(min_latents, k_fraction=hi)  # the trial rounds k = k_fraction x n
        if k_problem(top, min_latents):
            raise SpaceError(f"{path}: params.k_fraction: {hi:g} x n_latents rounds to "
                             f"{top} = n_latents when n_latents is "
                             f"{min_latents} (expansion {min_exp:g} x d={d}); need k < n_latents")


def activation_choices(space: SweepSpace) -> list[str]:
    """The activations the space's trials can have."""
    spec = space.params.get("activation", DEFAULT_ACTIVATION)
    return list(spec.choices or []) if isinstance(spec, ParamSpec) else [str(spec)]


def owners(name: str) -> list[str]:
    """The activations that use parameter `name` (k_fraction goes with k)."""
    wanted = "k" if name == "k_fraction" else name
    return [a for a, cls in ACTIVATIONS.items() if wanted in cls.params | set(cls.options)]


def check_owned(path: Path, space: SweepSpace) -> None:
    """A parameter that belongs to some activations (k, an L0 penalty, an activation option)
    must reach a trial whose activation uses it: given to none, or to one that does not use it,
    it would be ignored, or fail every such trial. An L0 penalty under `training:` reaches every
    trial, so every activation of the space must take it."""
    choices = activation_choices(space)
    for name, spec in space.params.items():
        if name not in OWNED:
            continue
        users = owners(name)
        when = spec.when if isinstance(spec, ParamSpec) else None
        wrong = [a for a in when or [] if a not in users]
        if wrong:
            raise SpaceError(f"{path}: params.{name}.when: activation(s) {wrong} do not use "
                             f"{name} (it belongs to {users})")
        if not any(a in users and (when is None or a in when) for a in choices):
            raise SpaceError(f"{path}: params.{name}: no trial of this space would use it: the "
                             f"activation is {' or '.join(choices)}, and {name} belongs to "
                             f"{' / '.join(users)}; remove it, or add such an activation")
    for name in ("l0_lambda",):
        value = space.training.get(name)
        bad = []
        for choice in choices:
            try:
                check_penalty(choice, value or 0.0)
            except ValueError:
                bad.append(choice)
        if bad:
            mixed = len(bad) < len(choices)
            fix = (f"move it to params (it is then given to {' / '.join(owners(name))} trials "
                   "only)" if mixed else f"remove it, or use activation "
                   f"{' / '.join(owners(name))}")
            raise SpaceError(f"{path}: training.{name}: every trial gets it, but activation(s) "
                             f"{bad} have no L0 penalty (only {' / '.join(owners(name))}): {fix}")
