"""Atomic writes give files the mode the umask asks for, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from harness.core.atomic import write_json, write_safetensors, write_text


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_text(tmp_path / "b.txt", "hi")
        write_safetensors(tmp_path / "c.safetensors", {"t": torch.zeros(2)})
    finally:
        os.umask(old)
    for name in ("a.json", "b.txt", "c.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "c.safetensors"]
