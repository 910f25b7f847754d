"""Names a package exports, imported when first used: `import harness` (and a command's --help)
then imports no torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str],
                 renamed: dict[str, str] | None = None) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: each name of `exports` (name -> module) is
    imported from its module on first use (under its `renamed` name there, if any), then kept
    in the package so later lookups do not come here."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), (renamed or {}).get(name, name))
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
