"""One reading of a space file: UTF-8 text, YAML with scientific notation as numbers (`1e-3` is
the float 0.001 in every field, as in YAML 1.2; PyYAML's YAML 1.1 would read a string), and no
key given twice in one mapping (PyYAML keeps the last one silently)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from harness.errors import SaesweepError

# YAML 1.1 needs a dot in a float; these are the exponent forms without one (1e-3, 5E+4, .5e2)
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class SpaceYamlError(SaesweepError, ValueError):
    """The file cannot be read as a space: the message says where and why."""


class _Loader(yaml.SafeLoader):
    """SafeLoader with exponent floats and duplicate keys refused."""

    yaml_implicit_resolvers = {  # a copy: adding a resolver must not change SafeLoader's
        k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpaceYamlError(f"key {key!r} is given twice in one mapping, on lines "
                                     f"{seen[key]} and {line}: give it once")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT,
                              list("-+0123456789."))


def read_space_yaml(path: Path) -> Any:
    """The YAML document in `path`; SpaceYamlError for a binary, non-UTF-8 or invalid file and
    for a key given twice; OSError when it cannot be read."""
    data = path.read_bytes()
    if b"\x00" in data:
        raise SpaceYamlError("a binary file, not a YAML space")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpaceYamlError(f"not UTF-8 text (byte {e.start}): save the space as UTF-8") from e
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SpaceYamlError(f"not valid YAML ({e})") from e
