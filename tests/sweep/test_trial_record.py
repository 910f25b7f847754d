"""The one record of a trial, through a real journal storage."""

from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState

from harness.core.metrics import METRICS
from harness.sweep.storage import open_storage
from harness.sweep.trial_record import RUN_COLUMNS, TrialRecord, metric_columns


def study(tmp_path) -> optuna.Study:
    return optuna.create_study(storage=open_storage(str(tmp_path / "s.journal")))


def test_the_metric_columns_follow_the_metrics_table():
    cols = metric_columns()
    for name, m in METRICS.items():
        expected = {"eval": f"final_{name}", "truth": name}.get(m.source)
        assert expected is None or expected in cols
    assert {"best_r2", "best_fvu"} <= set(cols)
    assert set(TrialRecord.columns()) >= set(cols) | set(RUN_COLUMNS) | {"fail_reason", "device"}


def test_a_record_round_trips_through_the_storage_and_trial_json(tmp_path):
    s = study(tmp_path)
    trial = s.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    record = TrialRecord(number=trial.number, state="COMPLETE", params=dict(trial.params),
                         values=[0.9], device="cuda:3", host="h", worker=1,
                         trial_dir=str(tmp_path / "0000"), n_latents=64, k=4, lr=1e-3,
                         expansion=4.0, activation="topk",
                         metrics={"final_r2": 0.9, "final_fvu": 0.1, "final_l0": 3.5,
                                  "final_dead_ratio": 0.0, "steps": 10})
    assert record.save(trial) is None
    s.tell(trial, [0.9])
    back = TrialRecord.from_frozen(s.get_trials()[0])
    assert back == record
    assert back.final("r2") == 0.9 and back.final("n_latents") == 64
    assert back.final("recovery") is None
    on_disk = json.loads((tmp_path / "0000" / "trial.json").read_text())
    assert on_disk["state"] == "COMPLETE" and on_disk["device"] == "cuda:3"
    assert on_disk["final_r2"] == 0.9


def test_writing_a_fresh_record_clears_what_a_retry_inherited(tmp_path):
    s = study(tmp_path)
    old = s.ask()
    TrialRecord(number=old.number, fail_reason="lease expired", prune_rule="r2_floor",
                metrics={"final_r2": 0.5}).save(old, write_file=False)
    s.tell(old, state=TrialState.FAIL)
    s.enqueue_trial({}, user_attrs=s.get_trials()[0].user_attrs)
    retry = s.ask()
    assert retry.user_attrs["fail_reason"] == "lease expired"  # what Optuna's retry copies
    TrialRecord(number=retry.number).save(retry, write_file=False)
    fresh = TrialRecord.from_frozen(s.get_trials()[1])
    assert fresh.fail_reason is None and fresh.prune_rule is None and fresh.metrics == {}


def test_a_record_whose_folder_cannot_be_written_says_why(tmp_path):
    s = study(tmp_path)
    trial = s.ask()
    (tmp_path / "blocked").write_text("a file")
    problem = TrialRecord(number=0, trial_dir=str(tmp_path / "blocked" / "0000")).save(trial)
    assert problem is not None and "blocked/0000/trial.json" in problem
    assert s.get_trials()[0].user_attrs["trial_dir"].endswith("blocked/0000")
