"""Reading back the files the harness wrote (a trial's history and configs, a saved SAE, a cached
reference pass): one error, `CorruptFile`, whose message names the file and what is wrong with
it, instead of a decoder's traceback. A file can be cut short by a full disk, a copy that
stopped, or a hand edit; the caller decides whether to skip the one trial or stop (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from harness.errors import SaesweepError


class CorruptFile(SaesweepError, ValueError):
    """A file that cannot be read back as what it should be; the message names it and why."""


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path`; FileNotFoundError when it is absent, CorruptFile when it is
    not UTF-8, not JSON (e.g. cut short) or not an object."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFile(f"{path}: not UTF-8 text (byte {e.start}); the file is damaged") from e
    except IsADirectoryError as e:
        raise CorruptFile(f"{path}: a folder, not a JSON file") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        cut = " (cut short?)" if e.pos >= len(text.rstrip()) else ""
        raise CorruptFile(f"{path}: not valid JSON{cut}: {e.msg} at line {e.lineno} column "
                          f"{e.colno}") from e
    if not isinstance(data, dict):
        raise CorruptFile(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def read_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; FileNotFoundError when it is absent, CorruptFile when
    its header or data cannot be read (a truncated file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CorruptFile(f"{path}: not a readable safetensors file (truncated or damaged: "
                          f"{e})") from e


def safetensors_problem(path: str | Path) -> str | None:
    """Why a safetensors file's header cannot be read (cheap: the data is not read), else None."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        return f"{path}: not a readable safetensors file (truncated or damaged: {e})"
    return None


def check_shapes(path: str | Path, tensors: dict[str, torch.Tensor],
                 expected: dict[str, tuple[int, ...]]) -> None:
    """CorruptFile naming the tensors that are missing, or the first whose shape is not the
    config's."""
    missing = sorted(set(expected) - tensors.keys())
    if missing:
        raise CorruptFile(f"{path}: missing tensors {missing}")
    for key, shape in expected.items():
        got = tuple(tensors[key].shape)
        if got != shape:
            raise CorruptFile(f"{path}: tensor {key!r} has shape {list(got)}, but its cfg.json "
                              f"says {list(shape)}: the weights and the config disagree")
