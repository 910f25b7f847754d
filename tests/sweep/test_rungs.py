"""Token-budget rungs: the plan, the checks, and a real sweep whose best configuration of every
k is re-run at the full budget, equal to training it there from the start."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import load_file
from scripts_run import report_here, sweep_here
from spaces import tiny_space, write_space

from harness import SaeTrainer, TopKSae
from harness.core.seeding import stream_seed
from harness.report.data import complete, load_trials
from harness.sweep.space import SpaceError, load_space
from harness.sweep.space.rungs import plan_size, rung_of, rung_sizes
from harness.sweep.space.schema import FidelitySection

RUNGS = {"tokens": [2560, 11_400], "reduction": 2, "group_by": ["k"], "promote": "measured"}


def _space(store: Path, results: Path, **sections):
    params = {"expansion": 2, "k": {"type": "categorical", "choices": [2, 4]},
              "lr_scale": {"type": "float", "low": 0.7, "high": 1.4, "log": True}}
    sections = {"budget": {"n_trials": 6}, **sections}
    return tiny_space(store, results, params=params, fidelity=RUNGS, workers=2,
                      wandb={"mode": "off"}, **sections)


def test_the_plan_is_the_most_configurations_the_budget_pays_for():
    rungs = FidelitySection(tokens=[100, 300, 900], reduction=3)
    assert rung_sizes(9, rungs) == [9, 3, 1]
    # 4 groups of 9 + 3 + 1 trials = 52; of 9x100 + 3x300 + 900 = 2,700 tokens each
    assert plan_size(rungs, 4, 52, None) == 9
    assert plan_size(rungs, 4, 1000, 4 * 2700) == 9
    assert plan_size(rungs, 4, 1000, 4 * 2700 - 1) == 8  # 8 + 2 + 0: nothing at the last rung
    assert rung_sizes(8, rungs)[-1] == 0


@pytest.mark.parametrize(("change", "says"), [
    ({"fidelity": {**RUNGS, "tokens": [500, 400]}}, "increasing"),
    ({"fidelity": {**RUNGS, "group_by": ["width"]}}, "fidelity.group_by: 'width'"),
    ({"fidelity": {**RUNGS, "group_by": ["lr_scale"]}}, "params.lr_scale must be categorical"),
    ({"fidelity": {**RUNGS, "tokens": [2560, 99_000]}}, "more than a trial trains in full"),
    ({"budget": {"n_trials": 6, "tokens": 11_000}},
     "budget.tokens: 11000 tokens is less than one trial at the last rung trains (11332 tokens)"),
    ({"params": {"expansion": 2, "k": {"type": "categorical", "choices": [2, 4]},
                 "activation": {"type": "categorical", "choices": ["topk", "relu"]},
                 "l1_lambda": 1e-3}},
     "fidelity.group_by: params.k does not apply to activation(s) ['relu']"),
    ({"training": {"epochs": 2, "batch_size": 256, "max_train_tokens": 5000}},
     "training.max_train_tokens"),
])
def test_rungs_that_cannot_run_are_refused_naming_the_key(synthetic_store, tmp_path, change,
                                                           says):
    space = _space(synthetic_store, tmp_path / "results")
    space.update(change)
    with pytest.raises(SpaceError, match=re.escape(says)):
        load_space(write_space(tmp_path / "s.yaml", space))
    assert not (tmp_path / "results").exists()


def test_the_best_of_each_k_is_rerun_at_the_full_budget_as_if_trained_there_and_reported(
        synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    path = write_space(tmp_path / "s.yaml", _space(synthetic_store, results,
                                                   budget={"n_trials": 6, "tokens": 32_904}))
    proc = sweep_here(capsys, str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 11,400 tokens at batch 256 trains 45 whole batches: one epoch of 5,700 tokens (23
    # batches) and 22 batches more, 11,332 tokens: what the budget pays
    assert "6 trials (4 at 2.56k, 2 at 11.3k tokens)" in proc.stdout
    assert "tokens=2.56k rung=1/2" in proc.stdout and "tokens=11.3k rung=2/2" in proc.stdout
    block = proc.stdout.split("best trials (maximize r2):\n")[1].split("study storage:")[0]
    shown = [int(line.split()[0]) for line in block.splitlines()[1:] if line[:6].strip().isdigit()]
    again = sweep_here(capsys, str(path))
    assert "already has 6 of its 6 trials: nothing to run" in again.stdout
    # the token budget holds exactly: 2 k x (2 x 2,560 + 11,332) = 32,904
    study = optuna.load_study(study_name="t", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "t" / "study.journal"))))
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 6 and sum(t.user_attrs["tokens_seen"] for t in trials) == 32_904
    for k in (2, 4):
        low = [t for t in trials if t.params["k"] == k and rung_of(t).rung == 0]
        top = [t for t in trials if t.params["k"] == k and rung_of(t).rung == 1]
        assert len(low) == 2 and len(top) == 1
        assert all(t.user_attrs["tokens_seen"] == 2560 for t in low)
        assert top[0].user_attrs["tokens_seen"] == 11_332 and top[0].user_attrs["rung"] == 1
        best = max(low, key=lambda t: t.values[0])
        assert rung_of(top[0]).promoted_from == best.number
        assert top[0].params == best.params
    # the summary's best trials are the full-budget ones only
    assert sorted(shown) == sorted(t.number for t in trials if rung_of(t).rung == 1)
    # a re-run is training to that budget from the start: the same SAE, bit for bit
    top = next(t for t in trials if rung_of(t).rung == 1)
    fixed = optuna.trial.FixedTrial(top.params)
    fixed.set_user_attr("fidelity", top.user_attrs["fidelity"])
    setup = load_space(path).setup(fixed)
    assert setup.config.max_train_tokens == 11_400
    sae = TopKSae(setup.n_latents, 16, setup.k,
                  seed=stream_seed(0, "trial", rung_of(top).root))
    config = setup.config.replace(progress=False)
    history = SaeTrainer(sae).train(store=synthetic_store, run_id="syn",
                                    layer_signature="synthetic", config=config)
    saved = load_file(str(Path(top.user_attrs["trial_dir"]) / "sae_weights.safetensors"))
    assert torch.equal(saved["W_dec"], sae.W_dec.detach().cpu())
    assert history.final.tokens == top.user_attrs["tokens_seen"]
    # the report leaves the lower rungs out of its fronts, tables and fits, and says so
    df = load_trials("t", results_dir=results)
    assert sorted(df["rung"]) == [0, 0, 0, 0, 1, 1]
    assert sorted(complete(df)["number"]) == sorted(df[df["rung"] == 1]["number"])
    proc = report_here(capsys, "t", "--results", str(results), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 complete trial(s) of rungs below the last" in proc.stdout


    # a larger budget later tops the plan up to exactly its sizes: 4 per k at the first rung,
    # the best 2 per k (the one promoted already and the best one not) at the full budget
    more = sweep_here(capsys, str(write_space(tmp_path / "more.yaml", _space(
        synthetic_store, results))), "--n-trials", "12", "--workers", "1")
    assert more.returncode == 0, more.stdout + more.stderr
    study = optuna.load_study(study_name="t", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "t" / "study.journal"))))
    again = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    for k in (2, 4):
        low = [t for t in again if t.params["k"] == k and rung_of(t).rung == 0]
        top = [t for t in again if t.params["k"] == k and rung_of(t).rung == 1]
        assert len(low) == 4 and len(top) == 2
        assert len({rung_of(t).promoted_from for t in top}) == 2  # none re-run twice
        best = sorted(low, key=lambda t: t.values[0], reverse=True)
        assert rung_of(top[1]).promoted_from in {t.number for t in best[:3]}


def test_a_budget_too_small_for_the_rungs_runs_its_trials_at_the_full_budget_and_says_so(
        synthetic_store, tmp_path, capsys):
    """--n-trials 3 where one configuration per k through both rungs needs 6: the user gets 3
    trials, at the full budget, cycling through k, and the console says what changed."""
    results = tmp_path / "results"
    path = write_space(tmp_path / "s.yaml", _space(synthetic_store, results))
    proc = sweep_here(capsys, str(path), "--n-trials", "3", "--workers", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 trials (3 at 11.3k tokens)" in proc.stdout
    assert ("rungs: one configuration per k reaching the last rung needs n_trials >= 6 and "
            "tokens >= 32904 (the budget: n_trials 3, tokens None), so 3 trial(s) run at the "
            "full budget only (11332 tokens each), cycling through the groups") in proc.stdout
    study = optuna.load_study(study_name="t", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "t" / "study.journal"))))
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.params["k"] for t in trials) == [2, 2, 4]
    assert all(rung_of(t).rung == 1 and t.user_attrs["tokens_seen"] == 11_332 for t in trials)
    df = load_trials("t", results_dir=results)
    assert len(complete(df)) == 3  # every one is a full-budget result


def test_promotion_by_prediction_records_each_prediction_and_the_report_shows_its_coverage(
        synthetic_store, tmp_path, capsys):
    """The default promotion: each promoted trial carries the prediction it was promoted on, and
    the report plots it against what it measured and states the intervals' coverage."""
    results = tmp_path / "results"
    space = _space(synthetic_store, results)
    space["fidelity"] = {k: v for k, v in RUNGS.items() if k != "promote"}
    space["params"]["expansion"] = {"type": "categorical", "choices": [2, 4]}
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    df = load_trials("t", results_dir=results)
    top = df[df["rung"] == 1]
    assert len(top) == 2 and top["predicted_fvu"].notna().all()
    assert ((top["predicted_low"] < top["predicted_fvu"])
            & (top["predicted_fvu"] < top["predicted_high"])).all()
    assert df[df["rung"] == 0]["predicted_fvu"].isna().all()
    proc = report_here(capsys, "t", "--results", str(results), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "## Predicted full-budget FVU" in summary
    covered = sum(lo <= f <= hi for f, lo, hi in zip(
        top["final_fvu"], top["predicted_low"], top["predicted_high"], strict=True))
    assert (f"Interval coverage of the promoted trials' predictions (made before they trained; "
            f"predictions.png): {covered / 2:.0%} of 2.") in summary
    # every (latents, k) cell of the space is predicted, trained at the full budget or not
    table = summary.split("## Predicted full-budget FVU")[1].split("Interval coverage")[0]
    cells = re.findall(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|", table, flags=re.M)
    assert sorted(cells) == [("32", "2"), ("32", "4"), ("64", "2"), ("64", "4")]
    assert (tmp_path / "rep" / "predictions.png").exists()
