"""The study's budget in trials, training tokens and trial hours: the arithmetic, and short real
sweeps that stop when the next trial would not fit."""

from __future__ import annotations

import optuna
import pytest
from scripts_run import sweep_here
from spaces import tiny_space, write_space

from harness.sweep.budget import BudgetState, budget_state
from harness.sweep.space.schema import BudgetSection


def test_a_trial_fits_only_with_the_running_ones_counted():
    state = BudgetState(used=3, waiting=0, running=1, tokens=20_000, seconds=30.0, finished=2,
                        compute=2e8)
    assert state.tokens_fit(None, 10_000)
    assert state.tokens_fit(40_000, 10_000) and not state.tokens_fit(39_999, 10_000)
    assert not state.tokens_fit(40_000, 10_000, more=2)
    # mean 15 s a trial: 30 s done, one running, one more = 60 s
    assert state.hours_fit(60 / 3600) and not state.hours_fit(59 / 3600)
    assert BudgetState(used=0, waiting=0, running=0).hours_fit(1e-9)  # nothing measured yet
    # compute: 2e8 done, one running and one more at 1e8 each
    assert state.compute_fit(4e8, 1e8) and not state.compute_fit(4e8 - 1, 1e8)
    section = BudgetSection(n_trials=9, tokens=40_000, compute=4e8, hours=1.0)
    assert state.describe(section) == ("tokens 20k of 40k, compute 200M of 400M token-latents, "
                                       "0.0083 of 1 trial h")


def _load(results):
    return optuna.load_study(study_name="t",
                             storage=optuna.storages.JournalStorage(
                                 optuna.storages.journal.JournalFileBackend(
                                     str(results / "t" / "study.journal"))))


def test_the_token_budget_stops_the_sweep_before_the_trial_that_would_not_fit(
        synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    # a trial plans 2 epochs of the 5,700 training tokens: two fit in 28,500, three do not
    space = tiny_space(synthetic_store, results, budget={"n_trials": 10, "tokens": 28_500},
                       workers=1, wandb={"mode": "off"})
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = _load(results)
    assert len(study.trials) == 2
    assert budget_state(study).tokens == sum(t.user_attrs["tokens_seen"] for t in study.trials)
    assert "(tokens 11.4k of 28.5k)" in proc.stdout and "(tokens 22.8k of 28.5k)" in proc.stdout
    # the run that hits the budget says so itself
    assert ("stopped: the token budget is spent (tokens 22.8k of 28.5k) with 2 of 10 trials "
            "run; raise budget.tokens to run more") in proc.stdout
    again = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert "already has spent its token budget (tokens 22.8k of 28.5k)" in again.stdout
    assert len(_load(results).trials) == 2


def test_the_compute_budget_counts_tokens_times_latents_and_stops_the_sweep(
        synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    # 11,400 tokens x 64 latents = 729,600 a trial: two fit in 2M, three do not
    space = tiny_space(synthetic_store, results, budget={"n_trials": 10, "compute": 2e6},
                       workers=1, wandb={"mode": "off"})
    space["params"]["expansion"] = 4
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = _load(results)
    assert len(study.trials) == 2 and budget_state(study).compute == 2 * 729_600
    assert ("stopped: the compute budget is spent (compute 1.46M of 2M token-latents) with 2 "
            "of 10 trials run; raise budget.compute to run more") in proc.stdout
    space["budget"]["compute"] = 7e5  # less than one trial: refused before anything is written
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", {
        **space, "results_dir": str(tmp_path / "fresh")})))
    assert proc.returncode == 2 and "budget.compute: 700000 tokens x latents is less than the " \
        "widest trial costs (729600" in proc.stderr
    assert not (tmp_path / "fresh").exists()


def test_the_hour_budget_stops_after_the_first_trial_that_spends_it(synthetic_store, tmp_path,
                                                                      capsys):
    results = tmp_path / "results"
    space = tiny_space(synthetic_store, results, budget={"n_trials": 10, "hours": 1e-4},
                       workers=1, wandb={"mode": "off"})  # 0.36 s: one trial takes longer
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = _load(results)
    assert len(study.trials) == 1 and study.trials[0].user_attrs["wall_time_s"] > 0.36
    assert "of 0.0001 trial h)" in proc.stdout
    assert "stopped: the hour budget is spent" in proc.stdout and \
        "raise budget.hours to run more" in proc.stdout


def _quoted(path):
    """The space with `5e8` quoted, as a user who wrote the string "5e8" would have it (unquoted,
    5e8 is a number: harness.sweep.space.yaml_file)."""
    path.write_text(path.read_text().replace("tokens: 5e8", 'tokens: "5e8"'))
    return path


@pytest.mark.parametrize(("budget", "says"), [
    ({"n_trials": 4, "tokens": 1000},
     "budget.tokens: 1000 tokens is less than one trial trains (11400 tokens"),
    ({"n_trials": 4, "tokens": "5e8"},
     "budget.tokens: Input should be a valid number (got '5e8')"),
    ({"n_trials": 4.0}, "budget.n_trials: Input should be a valid integer (got 4.0)"),
    ({"n_trials": "4"}, "budget.n_trials: Input should be a valid integer (got '4')"),
])
def test_a_budget_that_cannot_pay_for_a_trial_or_is_not_a_number_is_refused(
        synthetic_store, copy_finished, tmp_path, capsys, budget, says):
    """Exit 2 before anything is written, and a finished study is left exactly as it was."""
    results = copy_finished
    journal = results / "t" / "study.journal"
    before = journal.read_bytes()
    space = tiny_space(synthetic_store, results, budget=budget, wandb={"mode": "off"})
    proc = sweep_here(capsys, str(_quoted(write_space(tmp_path / "s.yaml", space))))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert says in proc.stderr
    assert journal.read_bytes() == before
    fresh = tiny_space(synthetic_store, tmp_path / "fresh", budget=budget, wandb={"mode": "off"})
    proc = sweep_here(capsys, str(_quoted(write_space(tmp_path / "f.yaml", fresh))))
    assert proc.returncode == 2 and says in proc.stderr
    assert not (tmp_path / "fresh").exists()
