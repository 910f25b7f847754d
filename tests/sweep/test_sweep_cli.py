"""End-to-end: the real `python -m harness.sweep` CLI in subprocesses, on synthetic data."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from scripts_run import report_here, sweep_here
from spaces import assert_settled, load, slow_space, tiny_space, write_space
from wandb_records import run_contents

from harness.sweep.arguments import build_parser
from harness.sweep.space import load_space
from harness.sweep.study import create_study

ROOT = Path(__file__).resolve().parents[2]


def sweep(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.sweep", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_every_flag_has_help_and_is_documented():
    from scripts_run import documented_flags

    assert documented_flags(build_parser()) == []


def test_two_workers_complete_a_sweep_with_offline_wandb(synthetic_store, tmp_path):
    results = tmp_path / "results"
    space = write_space(tmp_path / "s.yaml", tiny_space(synthetic_store, results))
    proc = sweep(str(space), "--n-trials", "8", "--workers", "2", "--wandb", "offline")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = load(results)
    trials = study.get_trials()
    assert len(trials) == 8  # the global budget, exact on a journal file
    assert_settled(study)
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}
    for t in trials:
        assert t.state == TrialState.COMPLETE
        a = t.user_attrs
        for key in ("final_r2", "best_r2", "final_fvu", "final_l0", "final_dead_ratio",
                    "tokens_seen", "wall_time_s", "device", "n_latents", "k", "lr"):
            assert key in a, key
        assert t.value == pytest.approx(a["final_r2"])
        folder = Path(a["trial_dir"])
        for name in ("sae_weights.safetensors", "cfg.json", "history.json", "trial.json",
                     "training_config.json", "meta.json"):
            assert (folder / name).exists(), folder / name
        assert json.loads((folder / "trial.json").read_text())["params"] == t.params
    assert "best trials" in proc.stdout and proc.stdout.count("COMPLETE") >= 8
    # the synthetic store carries its true directions: every trial says how many it recovered
    assert all(0.0 <= t.user_attrs["recovery"] <= 1.0 and 0.0 < t.user_attrs["mmcs"] <= 1.0
               and 0.0 < t.user_attrs["firing_f1"] <= 1.0 for t in trials)
    assert proc.stdout.count("recovered=") == 8 and "found%" in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if re.match(r"trial +\d+ ", line)]
    assert lines[-1].endswith("[8/8]") and all("/8" in line for line in lines)
    assert any(" left]" in line for line in lines)  # a time-left estimate while trials remain
    assert f"next:\n  python -m harness.report t --results {results}" in proc.stdout
    # the user's own space: the footer says how to add trials, not how to write a space
    assert "--n-trials N   # more trials in the same study" in proc.stdout
    assert "copy search_spaces/minilm.yaml" not in proc.stdout

    logs = sorted((results / "t" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == len(trials)  # one W&B run per trial
    contents = [run_contents(p) for p in logs]
    by_name = {c["run"].display_name: c for c in contents}
    first = by_name["t-trial-0000"]
    assert first["run"].run_group == "t" and first["run"].job_type == "trial"
    assert first["config"]["params"] == trials[0].params
    assert first["summary"]["r2"] == pytest.approx(trials[0].user_attrs["final_r2"])
    assert first["summary"]["status"] == "finished"


@pytest.mark.parametrize("lockstep", [1, 3])
def test_hopeless_learning_rates_are_pruned_and_diverged_ones_fail(synthetic_store, tmp_path,
                                                                   lockstep, capsys):
    """With --lockstep 3 the three trials train as one pack: each still ends on its own."""
    results = tmp_path / "results"
    space = tiny_space(
        synthetic_store, results,
        params={"expansion": 2, "k": 4,
                "lr": {"type": "categorical", "choices": [1e-3, 1.0, 30.0]}},
        sampler={"type": "grid"},
        pruner={"type": "median", "r2_floor": {"min_r2": 0.0, "warmup_steps": 5}},
        budget={"n_trials": 3})
    proc = sweep_here(capsys, str(write_space(tmp_path / "lr.yaml", space)), "--lockstep",
                      str(lockstep))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert load(results).user_attrs["space"]["lockstep"] == lockstep
    by_lr = {t.params["lr"]: t for t in load(results).get_trials()}
    good, hopeless, diverging = by_lr[1e-3], by_lr[1.0], by_lr[30.0]
    assert good.state == TrialState.COMPLETE
    assert hopeless.state == TrialState.PRUNED
    assert hopeless.user_attrs["prune_rule"] == "r2_floor"
    assert hopeless.user_attrs["prune_step"] == 5
    assert hopeless.user_attrs["prune_values"]["r2"] < 0
    assert "r2_floor at step 5" in hopeless.user_attrs["prune_reason"]
    assert diverging.state == TrialState.FAIL
    assert diverging.user_attrs["fail_reason"].startswith("diverged: training diverged at step")
    assert "pruned: r2_floor" in proc.stdout and "failed: diverged" in proc.stdout


def test_four_workers_on_one_storage_lose_and_duplicate_nothing(synthetic_store, tmp_path,
                                                                capsys):
    results = tmp_path / "results"
    space_file = write_space(tmp_path / "s.yaml", tiny_space(
        synthetic_store, results, budget={"n_trials": 12},
        training={"epochs": 1, "batch_size": 256, "eval_every": 5}))
    loaded = load_space(space_file)
    study = create_study(loaded, str(results / "t" / "study.journal"))
    for i in range(6):  # enqueued before the workers start: each must run exactly once
        study.enqueue_trial({"expansion": 2, "k": 2 + i, "lr": 2e-3}, user_attrs={"tag": i})
    proc = sweep_here(capsys, str(space_file), "--workers", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = load(results)
    trials = study.get_trials()
    assert_settled(study)
    assert len(trials) == 12  # enqueued trials count once they run; none beyond the budget
    assert all(t.state == TrialState.COMPLETE for t in trials)
    tags = Counter(t.user_attrs.get("tag") for t in trials if "tag" in t.user_attrs)
    assert tags == Counter(range(6))
    for i in range(6):
        tagged = next(t for t in trials if t.user_attrs.get("tag") == i)
        assert tagged.params["k"] == 2 + i
    assert len({t.user_attrs["trial_dir"] for t in trials}) == len(trials)
    assert len({t.user_attrs["worker"] for t in trials}) >= 2
    logs = sorted((results / "t" / "logs").glob("*_worker_*.log"))
    assert len(logs) == 4 and len({p.name.rsplit("_worker_", 1)[0] for p in logs}) == 1
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "Error" not in text, text


def test_an_rdb_storage_url_runs_resumes_and_reports(synthetic_store, tmp_path, capsys):
    """The RDB path (SQLite here; PostgreSQL takes the same URL form): two workers, a re-run
    that raises the budget continues the same study, and the report reads it."""
    results = tmp_path / "results"
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = str(write_space(tmp_path / "s.yaml", tiny_space(
        synthetic_store, results, training={"epochs": 1, "batch_size": 256, "eval_every": 5})))
    proc = sweep_here(capsys, space, "--storage", url, "--n-trials", "4", "--workers", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="t", storage=url)
    # exact: the workers check the budget and ask under a file lock beside the SQLite file
    assert len(study.get_trials()) == 4
    rerun = sweep_here(capsys, space, "--storage", url, "--n-trials", "7")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    study = optuna.load_study(study_name="t", storage=url)
    assert_settled(study)
    trials = study.get_trials()
    assert len(trials) == 7
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert not (results / "t" / "study.journal").exists()  # nothing went to the default file
    report = report_here(capsys, "t", "--storage", url, "--results", str(results), "--out",
                         str(tmp_path / "report"), "--format", "csv")
    assert report.returncode == 0, report.stdout + report.stderr
    rows = (tmp_path / "report" / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(trials)


def test_multi_objective_sweep_keeps_dead_feature_pruning(synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    space = tiny_space(synthetic_store, results,
                       objectives=[{"metric": "r2", "direction": "maximize"},
                                   {"metric": "l0", "direction": "minimize"}],
                       sampler={"type": "nsga2", "options": {"population_size": 4}},
                       pruner={"type": "none",
                               "dead_features": {"max_ratio": 0.01, "warmup_steps": 1}},
                       training={"epochs": 2, "batch_size": 256, "eval_every": 5,
                                 "dead_window_tokens": 256, "auxk_alpha": 0.0},
                       budget={"n_trials": 4})
    proc = sweep_here(capsys, str(write_space(tmp_path / "mo.yaml", space)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = load(results)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.values == pytest.approx([t.user_attrs["final_r2"], t.user_attrs["final_l0"]])
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs["prune_rule"] == "dead_features" for t in pruned)


def test_a_changed_study_definition_is_refused_and_nothing_is_written(synthetic_store,
                                                                     tmp_path, capsys):
    """Same direction, other metric: once accepted, it mixed FVU with L0 values in one study."""
    results = tmp_path / "results"
    space = tiny_space(synthetic_store, results,
                       objectives=[{"metric": "fvu", "direction": "minimize"}],
                       budget={"n_trials": 2}, wandb={"mode": "off"})
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    journal = results / "t" / "study.journal"
    before = journal.read_bytes()
    resolved = (results / "t" / "space.resolved.yaml").read_bytes()
    changed = copy.deepcopy(space)
    changed["objectives"] = [{"metric": "l0", "direction": "minimize"}]
    changed["params"]["lr"]["high"] = 0.1
    proc = sweep_here(capsys, str(write_space(tmp_path / "changed.yaml", changed)), "--n-trials",
                      "4")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "objectives[0]: {'metric': 'fvu', 'direction': 'minimize'} -> {'metric': 'l0'" in \
        proc.stderr
    assert "params.lr:" in proc.stderr and "'high': 0.1" in proc.stderr
    assert "--study NEW_NAME" in proc.stderr
    assert journal.read_bytes() == before  # no trial, no attribute, no invocation recorded
    assert (results / "t" / "space.resolved.yaml").read_bytes() == resolved
    # the same definition (the default holdout now written out) with a larger budget resumes
    same = copy.deepcopy(space)
    same["training"]["holdout_fraction"] = 0.05
    proc = sweep_here(capsys, str(write_space(tmp_path / "same.yaml", same)), "--n-trials", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(load(results).get_trials()) == 3


BAD_CLI = [
    ("unknown activation", {"params": {"expansion": 2, "k": 4, "activation": "gated"}},
     "params: Value error, 'activation' must be one of ['topk', 'batchtopk', 'jumprelu'"),
    ("activation without its penalty", {"params": {"expansion": 2, "activation": "relu"}},
     "activation 'relu' needs 'l1_lambda'"),
    ("bad matryoshka prefixes", {"params": {"expansion": 2, "k": 4, "activation":
                                            "matryoshka_batchtopk",
                                            "matryoshka_prefixes": "0.5,0.25"}},
     "params.matryoshka_prefixes: matryoshka_prefixes must be increasing fractions"),
    ("unknown key", {"budget": {"n_trials": 2, "trials": 3}}, "budget.trials: Extra inputs"),
    ("wrong type", {"budget": {"n_trials": "two"}}, "budget.n_trials: Input should be a valid"),
    ("low > high", {"params": {"expansion": 2, "k": 4,
                               "lr": {"type": "float", "low": 1.0, "high": 0.1}}},
     "params.lr: Value error, low (1.0) must be <= high (0.1)"),
    ("log with low <= 0", {"params": {"expansion": 2, "k": 4,
                                      "lr": {"type": "float", "low": -1, "high": 1,
                                             "log": True}}},
     "params.lr: Value error, log scale needs low > 0"),
    ("missing store", {"data": {"store": "/no/such/store", "run_id": "syn",
                                "layer_signature": "synthetic"}},
     "data.run_id: no activation run 'syn'"),
    ("missing layer", {"data": {"store": None, "run_id": "syn", "layer_signature": "h.99"}},
     "data.layer_signature:"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD_CLI, ids=[c[0] for c in BAD_CLI])
def test_bad_space_exits_2_with_its_message_and_writes_nothing(synthetic_store, tmp_path, capsys,
                                                               case, change, message):
    results = tmp_path / "results"
    space = tiny_space(synthetic_store, results)
    for key, value in change.items():
        if key == "data" and value["store"] is None:
            value = {**value, "store": str(synthetic_store)}
        space[key] = value
    path = write_space(tmp_path / "bad.yaml", space)
    proc = sweep_here(capsys, str(path))
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 2, out + err
    assert message in err and str(path) in err
    assert not results.exists()


def test_time_left_is_the_rate_of_this_run_times_what_remains():
    from harness.sweep.console import time_left as _time_left

    started = time.perf_counter() - 10.0  # 10 s ago, 4 trials finished here since
    assert _time_left(9, 5, 24, started) in ("  [9/24, ~38 s left]", "  [9/24, ~37 s left]")
    assert _time_left(5, 5, 24, started) == "  [5/24]"  # nothing finished in this run yet
    assert _time_left(24, 5, 24, started) == "  [24/24]"


def test_the_space_sets_the_worker_count_and_the_flag_overrides_it(synthetic_store, tmp_path,
                                                                   capsys):
    results = tmp_path / "results"
    space = tiny_space(synthetic_store, results, workers=2, budget={"n_trials": 2},
                       wandb={"mode": "off"})
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert proc.returncode == 0 and "2 worker(s)" in proc.stdout, proc.stdout + proc.stderr
    proc = sweep_here(capsys, str(tmp_path / "s.yaml"), "--workers", "1", "--n-trials", "3")
    assert proc.returncode == 0 and "1 worker(s)" in proc.stdout, proc.stdout + proc.stderr
    logs = sorted((results / "t" / "logs").glob("*_worker_*.log"))  # one per worker and run
    assert len(logs) == 3 and len({p.name.rsplit("_worker_", 1)[0] for p in logs}) == 2


def test_a_timeout_stop_is_said_on_the_console(synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    space = str(write_space(tmp_path / "slow.yaml", slow_space(synthetic_store, results, 5)))
    proc = sweep_here(capsys, space, "--timeout", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stopped: the timeout of 1 s was reached with" in proc.stdout
    assert "of 5 trials run; re-run the same command to continue" in proc.stdout


def test_online_wandb_without_credentials_says_it_goes_offline(synthetic_store, tmp_path,
                                                               capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    results = tmp_path / "results"
    space = tiny_space(synthetic_store, results, budget={"n_trials": 1},
                       training={"epochs": 1, "batch_size": 256, "eval_every": 5})
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)), "--wandb", "online")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "W&B: no API key here, so the trial runs are written offline to" in proc.stdout
    assert list((results / "t" / "wandb").glob("offline-run-*/run-*.wandb"))




def test_the_next_footer_follows_what_was_run():
    from harness.sweep.console import next_steps

    synthetic = next_steps("quickstart", "results/quickstart/study.journal", "results")
    assert "copy search_spaces/minilm.yaml" in synthetic  # first run: how to use your own store
    own = next_steps("mine", "results/mine/study.journal", "results", Path("my.yaml"))
    assert "python -m harness.sweep my.yaml --n-trials N" in own
    assert "copy search_spaces" not in own

