"""End to end: a sweep that samples every activation through the real CLI, then the report's
per-activation fronts (its own file, so that it runs beside test_sweep_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState
from scripts_run import report_here, sweep_here
from spaces import tiny_space, write_space

from harness.sweep.storage import open_storage


def load(results: Path, name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name,
                             storage=open_storage(str(results / name / "study.journal")))


ALL_ACTIVATIONS = ["topk", "batchtopk", "jumprelu", "matryoshka_batchtopk", "relu"]


def test_a_sweep_samples_every_activation_and_reports_each_front(synthetic_store, tmp_path,
                                                                 capsys):
    results = tmp_path / "results"
    space = tiny_space(
        synthetic_store, results, sampler={"type": "grid"},
        params={"expansion": 4, "k": 4, "lr": 3e-3,
                "activation": {"type": "categorical", "choices": ALL_ACTIVATIONS},
                "l1_lambda": {"type": "categorical", "choices": [0.05], "when": ["relu"]},
                "l0_lambda": 1e-3, "matryoshka_prefixes": "0.25"},
        objectives=[{"metric": "fvu", "direction": "minimize"},
                    {"metric": "l0", "direction": "minimize"}],
        budget={"n_trials": 5}, wandb={"mode": "off"})
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = load(results).get_trials()
    assert sorted(t.user_attrs["activation"] for t in trials) == sorted(ALL_ACTIVATIONS)
    for t in trials:
        activation = t.params["activation"]
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
        cfg = json.loads((Path(t.user_attrs["trial_dir"]) / "cfg.json").read_text())
        assert cfg["saesweep_activation"] == activation
        assert cfg["architecture"] == {"relu": "standard", "batchtopk": "jumprelu",
                                       "matryoshka_batchtopk": "jumprelu"}.get(activation,
                                                                              activation)
        assert ("k" in cfg) == (activation not in ("relu", "jumprelu"))
        assert set(t.params) == ({"activation", "l1_lambda"} if activation == "relu"
                                 else {"activation"})
        config = json.loads((Path(t.user_attrs["trial_dir"]) / "training_config.json")
                            .read_text())
        assert config["l0_lambda"] == (1e-3 if activation == "jumprelu" else 0.0)
        if activation in ("topk", "batchtopk", "matryoshka_batchtopk"):
            assert 3.0 <= t.user_attrs["final_l0"] <= 5.0  # mean L0 near k, held out
    report = report_here(capsys, "t", "--results", str(results), "--out", str(tmp_path / "r"))
    assert report.returncode == 0, report.stdout + report.stderr
    assert (tmp_path / "r" / "architectures.png").exists()
    summary = (tmp_path / "r" / "summary.md").read_text()
    matched = summary.split("## Architectures at matched L0")[1].split("##")[0]
    for activation in ALL_ACTIVATIONS:
        assert f"| {activation} " in matched


def test_a_transcoder_sweep_trains_samples_skip_and_reports_each_kind(tmp_path, capsys):
    """data.target_layer_signature makes every trial a transcoder (here on synthetic pairs
    generated on first use); `skip` is sampled; the two train in lockstep on one batch stream;
    the planted features' firing F1 is an objective; the report labels each kind's front."""
    results = tmp_path / "results"
    space = tiny_space(
        tmp_path / "store", results, sampler={"type": "grid"},
        params={"expansion": 4, "k": 4, "lr": 3e-3,
                "skip": {"type": "categorical", "choices": [False, True]}},
        objectives=[{"metric": "firing_f1", "direction": "maximize"},  # planted: an objective
                    {"metric": "l0", "direction": "minimize"}],
        budget={"n_trials": 2}, wandb={"mode": "off"}, lockstep=2)  # one pack: both at once
    space["data"] = {"store": str(tmp_path / "store"), "run_id": "pair",
                     "layer_signature": "synthetic",
                     "target_layer_signature": "synthetic.target",
                     "synthetic": {"d": 16, "n_features": 32, "mean_active": 3, "d_out": 12,
                                   "target_linear": 1.0, "n_tokens": 6000}}
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = load(results).get_trials()
    assert sorted(t.user_attrs["kind"] for t in trials) == ["skip_transcoder", "transcoder"]
    for t in trials:
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
        cfg = json.loads((Path(t.user_attrs["trial_dir"]) / "cfg.json").read_text())
        assert cfg["d_out"] == 12 and cfg["architecture"] == (
            "topk_skip_transcoder" if t.params["skip"] else "topk_transcoder")
        assert cfg["metadata"]["hook_name_out"] == "synthetic.target"
        assert t.values[0] == t.user_attrs["firing_f1"] and 0 < t.values[0] <= 1
    fvu = {t.params["skip"]: t.user_attrs["final_fvu"] for t in trials}
    assert fvu[True] < fvu[False]  # the target has a linear part only the skip path carries
    report = report_here(capsys, "t", "--results", str(results), "--out", str(tmp_path / "r"))
    assert report.returncode == 0, report.stdout + report.stderr
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "topk transcoder" in summary and "topk skip-transcoder" in summary
    assert "skip-transcoder(s)" in summary and "1 transcoder(s)" in summary
    assert (tmp_path / "r" / "architectures.png").exists()
    assert "firing_f1" in (tmp_path / "r" / "trials.csv").read_text().splitlines()[0]
