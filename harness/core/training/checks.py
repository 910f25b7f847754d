"""The checks every option group runs when it is made: types first (strictly, as a space file's
values are checked: one rule for the Python API and the YAML), then ranges, with messages that
name the option as `SaeTrainingConfig.<name>`."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model


def type_error(values: Mapping[str, Any], hints: Mapping[str, Any]) -> tuple[str, str, Any] | None:
    """(option, what is wrong, the value) for the first of `values` whose type is not its
    type in `hints`, checked strictly (2.5 is no int, "1e-3" no float, "yes" no bool; lists
    count as tuples), or None."""
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    names = tuple(sorted(given))
    try:
        _strict_model(names, tuple(hints[n] for n in names))(**given)
    except ValidationError as e:
        err = e.errors()[0]
        return str(err["loc"][0]), err["msg"], err.get("input")
    return None


@functools.cache
def _strict_model(names: tuple[str, ...], types: tuple[Any, ...]) -> type[BaseModel]:
    return create_model("SaeTrainingOptions", __config__=ConfigDict(strict=True, extra="forbid"),
                        **{n: (t, ...) for n, t in zip(names, types, strict=True)})


def check_types(group: Any) -> None:
    """ValueError naming the first field of the dataclass `group` whose value has a wrong type."""
    hints = _hints(type(group))
    error = type_error({f.name: getattr(group, f.name) for f in dataclasses.fields(group)}, hints)
    if error is not None:
        name, msg, value = error
        raise ValueError(f"SaeTrainingConfig.{name}: {msg} (got {value!r})")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check(cond: bool, name: str, expected: str, value: Any) -> None:
    if not cond:
        shown = repr(value) if isinstance(value, str) else value
        raise ValueError(f"SaeTrainingConfig.{name} must be {expected}, got {shown}")


def positive(obj: Any, *names: str, optional: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if optional and value is None:
            continue
        check(value is not None and value > 0, name, "> 0", value)
