"""scripts/bench_quality.py end to end on a tiny store (ours only: sparsify is not a dependency)."""

import json
from pathlib import Path

import torch
from scripts_run import run_script

from harness.core.recipes import default_lr
from harness.core.store import LocalStore
from harness.core.store.statistics import participation_ratio


def _bench(tmp_path: Path, *args: str, layer: str = "L", tokens: torch.Tensor | None = None):
    """bench_quality.py on a store of `tokens` (6,000 random 16-d ones around 3 by default),
    writing its scores to scores.json; (the process, the scores' path)."""
    tokens = torch.randn(6000, 16) + 3.0 if tokens is None else tokens
    LocalStore(tmp_path / "store").put_activations("acts", layer, tokens)
    out = tmp_path / "scores.json"
    proc = run_script("bench_quality.py", "--store", str(tmp_path / "store"), "--run-id", "acts",
                      "--layer", layer, *args, "--json", str(out), timeout=300)
    return proc, out


def test_bench_quality_scores_every_recipe_on_the_held_out_tail(tmp_path: Path):
    tokens = torch.randn(6000, 16, generator=torch.Generator().manual_seed(0)) + 3.0
    proc, out = _bench(
        tmp_path, "--tokens", "3000", "--lrs", "1e-3,4e-3,default", "--n-latents", "64",
        "--k", "4", "--batch", "256", "--heldout", "1000", "--no-sparsify", "--recipe",
        "default", "--recipe", "legacy", "--recipe",
        "decay:lr_decay_fraction=0.5,adam_betas=(0.8,0.99)", tokens=tokens)
    assert proc.returncode == 0, proc.stderr
    # the rule reads the training run's participation ratio: its 5,000 tokens
    LocalStore(tmp_path / "check").put_activations("acts", "L", tokens[:5000])
    spread = participation_ratio(LocalStore(tmp_path / "check").open("acts", "L"))
    assert "3,000 training tokens" in proc.stdout and "last 1,000 tokens" in proc.stdout
    scores = json.loads(out.read_text())
    assert {(s["trainer"], s["column"]) for s in scores} == {
        (r, lr) for r in ("default", "legacy", "decay") for lr in ("1e-3", "4e-3", "default")}
    for s in scores:  # the learning rate each trained with: each recipe's default resolved
        default = 2e-4 if s["trainer"] == "legacy" else default_lr(64, 16, 12, 256, spread)
        assert s["lr"] == (default if s["column"] == "default" else float(s["column"]))
    for s in scores:  # random data: a real FVU, near but below 1, at L0 <= k
        assert 0.3 < s["fvu"] < 1.0 and 0 < s["l0"] <= 4
    assert "| default |" in proc.stdout and "| legacy |" in proc.stdout


def test_bench_quality_compares_activations_at_matched_l0(tmp_path: Path):
    proc, out = _bench(
        tmp_path, "--tokens", "3000", "--n-latents", "64", "--batch", "256", "--heldout",
        "1000", "--activation", "topk,relu", "--l0s", "2,4", "--penalties", "relu=0.01,0.3")
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(out.read_text())
    assert [s["trainer"] for s in scores] == ["topk k=2", "topk k=4", "topk k=5",
                                "relu l1_lambda=0.01", "relu l1_lambda=0.3"]
    assert [s["activation"] for s in scores] == ["topk"] * 3 + ["relu"] * 2
    relu = [s for s in scores if s["activation"] == "relu"]
    assert relu[1]["l0"] < relu[0]["l0"]  # the larger penalty, the sparser
    assert "| activation | L0=2 | L0=4 |" in proc.stdout and "over TopK:" in proc.stdout
    assert "| topk | " in proc.stdout and "| relu | " in proc.stdout


def test_bench_quality_rejects_an_unknown_recipe_setting(tmp_path: Path):
    LocalStore(tmp_path / "store").put_activations("acts", "L", torch.randn(3000, 8))
    proc = run_script(
        "bench_quality.py", "--store",
        str(tmp_path / "store"), "--run-id", "acts", "--layer", "L", "--heldout", "500",
        "--no-sparsify", "--recipe", "x:lr_decay=0.2", timeout=120)
    assert proc.returncode != 0 and "unknown setting(s) ['lr_decay']" in proc.stderr


def test_bench_quality_splices_each_sae_into_the_model_with_model(tmp_path: Path, tiny_folder):
    from tiny_lm import HIDDEN, LAYER

    model, text = tiny_folder
    g = torch.Generator().manual_seed(0)
    proc, out = _bench(
        tmp_path, "--tokens", "2000", "--lrs", "default", "--n-latents", "64", "--k", "4",
        "--batch", "256", "--heldout", "1000", "--no-sparsify", "--recipe", "default",
        "--model", str(model), "--text", str(text), "--windows", "4", "--seq-len", "8",
        layer=LAYER, tokens=torch.randn(4000, HIDDEN, generator=g))
    assert proc.returncode == 0, proc.stderr
    [score] = json.loads(out.read_text())
    # a random LM on random activations: the splice changes its predictions (KL > 0); ΔCE can
    # take either sign there, and the score is a ratio of small differences
    assert score["kl"] > 0 and score["delta_ce"] != 0 and score["ce_loss_score"] != 1
    assert "delta_ce:" in proc.stdout and "kl:" in proc.stdout


def test_bench_quality_trains_transcoders_and_scores_the_target(tmp_path: Path):
    """--target-layer: each trainer (ours; sparsify's transcode=True where installed) reads the
    input and is scored on the held-out targets."""
    import importlib.util

    from harness.data.synthetic import SyntheticSpec, write_synthetic_store

    write_synthetic_store(tmp_path / "store", "acts", SyntheticSpec(
        d=16, n_features=32, mean_active=3, d_out=16, target_linear=0.5, n_tokens=6000),
        layer_signature="L")
    out = tmp_path / "scores.json"
    with_sparsify = importlib.util.find_spec("sparsify") is not None
    proc = run_script("bench_quality.py", "--store", str(tmp_path / "store"), "--run-id", "acts",
                      "--layer", "L", "--target-layer", "L.target", "--skip", "--tokens", "8000",
                      "--lrs", "default", "--n-latents", "64", "--k", "4", "--batch", "256",
                      "--heldout", "1000", "--recipe", "default", "--json", str(out),
                      *([] if with_sparsify else ["--no-sparsify"]), timeout=300)
    assert proc.returncode == 0, proc.stderr
    scores = {s["trainer"]: s for s in json.loads(out.read_text())}
    assert set(scores) == ({"default", "sparsify"} if with_sparsify else {"default"})
    for s in scores.values():
        assert 0 < s["fvu"] < 0.6 and 1 <= s["l0"] <= 4  # of the target, on held-out rows
