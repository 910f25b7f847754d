"""A trial fails with its reason recorded, whatever goes wrong inside it; the worker goes on."""

from __future__ import annotations

import optuna
import torch
from optuna.trial import TrialState
from spaces import tiny_space, write_space

from harness.sweep.space import load_space
from harness.sweep.storage import open_storage
from harness.sweep.study import create_study
from harness.sweep.trial import WorkerContext, run_trials
from harness.sweep.trial_record import TrialRecord


def test_an_exception_inside_a_trial_fails_it_with_the_reason(synthetic_store, tmp_path):
    results = tmp_path / "results"
    space = tiny_space(synthetic_store, results, params={"expansion": 2, "k": 4, "lr": 3e-3},
                       wandb={"mode": "off"})
    loaded = load_space(write_space(tmp_path / "s.yaml", space))
    journal = str(results / "t" / "study.journal")
    create_study(loaded, journal)
    study = optuna.load_study(study_name="t", storage=open_storage(journal))
    trials = [study.ask(), study.ask()]
    # a device this process cannot use: on a CPU-only torch, AssertionError from CUDA init
    device = "cuda:0" if not torch.cuda.is_available() else "cuda:99"
    ctx = WorkerContext(device=device, device_label="cuda:7", worker_index=0,
                        wandb_mode="off", results_dir=results / "t")
    outcomes = run_trials(trials, loaded, ctx)
    assert [o.state for o in outcomes] == [TrialState.FAIL, TrialState.FAIL]
    for trial, outcome in zip(trials, outcomes, strict=True):
        study.tell(trial, state=outcome.state)
        record = TrialRecord.from_frozen(study.get_trials()[trial.number])
        assert record.state == "FAIL" and record.fail_reason.startswith("error: ")
        assert record.fail_reason == outcome.summary and record.device == "cuda:7"
        assert (results / "t" / "trials" / f"{trial.number:04d}" / "trial.json").exists()
