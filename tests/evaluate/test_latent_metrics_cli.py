"""Sparse probing and absorption through the real CLIs, on a tiny LM whose vocabulary is
alphabetic words carrying their first letter: a capture, a 2-trial sweep measuring both (one an
objective) with its report and W&B runs; python -m harness.evaluate; and what a sweep refuses
before anything is written."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import random
from pathlib import Path

import pytest
from scripts_run import cli_here, evaluate_here, report_here, sweep_here
from spaces import tiny_space, write_space
from tiny_lm import ALPHA_WORDS, LAYER, text_file, tiny_lm
from wandb_records import run_contents

from harness.core.sae import TopKSae

WORDS = len(ALPHA_WORDS)  # the whole vocabulary: enough words for the probes to train
PROBE_KEYS = {f"sparse_probing_top{k}_{m}" for k in (1, 2, 5, 16) for m in ("accuracy", "auc")}
ABSORPTION_KEYS = {"absorption_rate", "full_absorption_rate", "absorption_letters",
                   "absorption_tokens"}


@pytest.fixture(scope="module")
def alpha(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny alphabetic LM's folder, a text of its words, and a probing CSV whose label is
    the first letter of the prompt's last word being in a-m."""
    folder = tmp_path_factory.mktemp("alpha_llama")
    lm = tiny_lm(words=ALPHA_WORDS)
    lm.model.save_pretrained(folder / "model")
    lm.tokenizer.save_pretrained(folder / "model")
    rng = random.Random(0)
    halves = [w for w in ALPHA_WORDS if w[0] <= "m"], [w for w in ALPHA_WORDS if w[0] > "m"]
    rows = [" ".join([*rng.sample(ALPHA_WORDS, 3), rng.choice(halves[i % 2])])
            for i in range(400)]  # balanced: sae-probes' split takes as many of each
    dataset = folder / "first_half.csv"
    dataset.write_text("prompt,target\n" + "\n".join(
        f"{p},{'yes' if p.split()[-1][0] <= 'm' else 'no'}" for p in rows))
    return {"model": folder / "model", "text": text_file(folder, vocab=ALPHA_WORDS),
            "dataset": dataset}


def _space(alpha: dict[str, Path], store: Path, results: Path, **extra: object) -> dict:
    target = {"model": str(alpha["model"]), "layer": LAYER}
    return tiny_space(store, results, **{
        "evaluation": {"sparse_probing": {**target, "datasets": [str(alpha["dataset"])]},
                       "absorption": {**target, "words": WORDS, "min_letters": 5}},
        **extra})


def test_a_sweep_measures_both_and_optimises_one(alpha, tmp_path, capsys):
    import optuna

    store, results = tmp_path / "store", tmp_path / "results"
    from harness.capture.cli import main as capture

    cap = cli_here(capsys, capture, "--model", str(alpha["model"]), "--layer", LAYER, "--text",
                   str(alpha["text"]), "--seq-len", "16", "--store", str(store), "--run-id",
                   "tiny")
    assert cap.returncode == 0, cap.stderr
    space = _space(alpha, store, results,
                   data={"store": str(store), "run_id": "tiny", "layer_signature": LAYER},
                   objectives=[{"metric": "sparse_probing_top2_auc", "direction": "maximize"},
                               {"metric": "l0", "direction": "minimize"}],
                   params={"expansion": 4, "k": {"type": "categorical", "choices": [2, 8]}},
                   training={"epochs": 4, "batch_size": 32, "eval_every": 4,
                             "holdout_fraction": 0.2},
                   sampler={"type": "grid"}, budget={"n_trials": 2}, wandb={"mode": "offline"})
    r = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sparse_probing: 1 datasets" in r.stdout and "absorption: " in r.stdout
    assert "sparse_probing_top2_auc" in r.stdout.split("Pareto front")[1]  # a column of it
    study = optuna.load_study(study_name="t", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "t" / "study.journal"))))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        assert t.values[0] == t.user_attrs["sparse_probing_top2_auc"]
        assert t.user_attrs.keys() >= ABSORPTION_KEYS | PROBE_KEYS
        assert t.user_attrs["absorption_letters"] >= 5 and t.user_attrs["absorption_s"] > 0
        assert 0 <= t.user_attrs["absorption_rate"] <= 1
    logs = sorted((results / "t" / "wandb").glob("offline-run-*/run-*.wandb"))
    summaries = {run_contents(p)["run"].display_name: run_contents(p)["summary"] for p in logs}
    for t in done:
        summary = summaries[f"t-trial-{t.number:04d}"]
        assert summary["absorption_rate"] == pytest.approx(t.user_attrs["absorption_rate"])
        assert summary["sparse_probing_top1_accuracy"] == pytest.approx(
            t.user_attrs["sparse_probing_top1_accuracy"])
    rep = report_here(capsys, "t", "--results", str(results))
    assert rep.returncode == 0, rep.stderr
    report = results / "t" / "report"
    with open(report / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in (*PROBE_KEYS, "absorption_rate", "full_absorption_rate"):
            assert math.isfinite(float(row[key])), key
    assert (report / "latent_fronts.png").is_file()
    summary = (report / "summary.md").read_text(encoding="utf-8")
    assert "## Sparse probing and absorption" in summary and "absorption_rate: trials" in summary


def test_evaluate_prints_both(alpha, tmp_path, capsys):
    sae = TopKSae(128, 32, 4, seed=0).save(tmp_path / "sae")
    r = evaluate_here(capsys, str(sae), "--model", str(alpha["model"]), "--layer", LAYER,
                      "--metrics", "sparse_probing,absorption", "--datasets",
                      str(alpha["dataset"]), "--words", str(WORDS), "--min-letters", "5")
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout)
    assert PROBE_KEYS | ABSORPTION_KEYS | {"sparse_probing_baseline_accuracy"} <= line.keys()
    assert "letters read by the probe" in r.stderr
    short = evaluate_here(capsys, str(sae), "--model", str(alpha["model"]), "--layer", LAYER,
                          "--metrics", "absorption", "--words", str(WORDS), "--min-letters",
                          "26")
    assert short.returncode == 0 and "the rates are NaN" in short.stderr
    assert json.loads(short.stdout)["absorption_rate"] is None  # JSON has no NaN: null


@pytest.mark.parametrize("change, message", [
    ({"sparse_probing": {"datasets": ["no_such_set"]}}, "unknown sae-probes dataset(s)"),
    ({"sparse_probing": {"datasets": ["missing.csv"]}}, "missing.csv: no such file"),
    ({"absorption": {"min_letters": 26}}, "fewer than min_letters=26"),
    ({}, "has width 32, but the store's activations have d=16"),
    ({"objective": "full_absorption_rate"}, "add evaluation.absorption"),
])
def test_what_cannot_be_measured_is_refused_before_anything_is_written(
        alpha, synthetic_store, tmp_path, capsys, change, message):
    results = tmp_path / "results"
    space = _space(alpha, synthetic_store, results)
    if "objective" in change:
        del space["evaluation"]["absorption"]
        space["objectives"] = [{"metric": change["objective"], "direction": "minimize"}]
    else:
        for section, values in change.items():
            space["evaluation"][section].update(values)
        if "absorption" in change:  # measured before the width is compared
            del space["evaluation"]["sparse_probing"]
    if "no_such_set" in str(change) and importlib.util.find_spec("sae_probes") is None:
        message = "pip install --no-deps sae-probes==0.4.2 zstandard"
    r = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert not (results / "t").exists()


def test_a_missing_sae_probes_install_is_refused(alpha, synthetic_store, tmp_path, capsys,
                                                monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sae_probes" else real(name, *a))
    space = _space(alpha, synthetic_store, tmp_path / "results")
    space["evaluation"]["sparse_probing"]["datasets"] = ["5_hist_fig_ismale"]
    r = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert r.returncode == 2 and "evaluation.sparse_probing.datasets" in r.stderr
    assert "pip install --no-deps sae-probes==0.4.2 zstandard" in r.stderr
    assert not (tmp_path / "results" / "t").exists()
