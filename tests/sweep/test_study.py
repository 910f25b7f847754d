import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from spaces import tiny_space, write_space

from harness.errors import StorageError
from harness.sweep.budget import budget_state
from harness.sweep.leases import LEASE_ATTR, Heartbeat, reap_stale, requeue, stale_reason
from harness.sweep.space import load_space
from harness.sweep.storage import open_storage
from harness.sweep.study import create_study, worker_seed


@pytest.fixture()
def loaded(synthetic_store: Path, tmp_path: Path):
    return load_space(write_space(tmp_path / "s.yaml",
                                  tiny_space(synthetic_store, tmp_path / "results")))


def test_create_study_records_resolved_settings_and_resumes(loaded, tmp_path):
    url = str(tmp_path / "study.journal")
    study = create_study(loaded, url)
    attrs = study.user_attrs
    assert attrs["optuna_version"] == optuna.__version__
    assert attrs["sampler"]["resolved"]["class"] == "RandomSampler"
    assert attrs["pruner"]["resolved"]["class"] == "NopPruner"
    assert attrs["data"]["d"] == 16 and attrs["space"]["study"]["name"] == "t"
    again = create_study(loaded, url)  # resume: same study, one more invocation recorded
    assert again._study_id == study._study_id
    assert len(again.user_attrs["invocations"]) == 2


def test_tpe_settings_are_recorded_as_in_effect(synthetic_store, tmp_path):
    space = tiny_space(synthetic_store, tmp_path / "r",
                       sampler={"type": "tpe", "options": {"multivariate": True,
                                                           "constant_liar": False}})
    loaded = load_space(write_space(tmp_path / "tpe.yaml", space))
    resolved = create_study(loaded, str(tmp_path / "j.journal")).user_attrs["sampler"]["resolved"]
    assert resolved["multivariate"] is True and resolved["constant_liar"] is False
    assert resolved["n_startup_trials"] == 10


def test_budget_counts_retries_once_and_waiting_trials_run(tmp_path):
    study = optuna.create_study(storage=open_storage(str(tmp_path / "b.journal")))
    t0 = study.ask()
    study.tell(t0, 1.0)
    t1 = study.ask()
    t1.suggest_float("x", 0, 1)
    study.tell(t1, state=TrialState.FAIL)
    requeue(study, study.trials[1], max_retry=2)  # retry of trial 1 -> WAITING
    state = budget_state(study)
    assert (state.used, state.waiting, state.running) == (1, 1, 0)
    t2 = study.ask()  # takes the enqueued retry
    assert t2.params == study.trials[1].params
    assert budget_state(study).used == 2 and budget_state(study).running == 1


def test_stale_reason_dead_pid_old_heartbeat_and_inherited_lease(tmp_path):
    study = optuna.create_study(storage=open_storage(str(tmp_path / "s.journal")))
    trial = study.ask()
    storage = study._storage
    frozen = lambda: storage.get_trial(trial._trial_id)  # noqa: E731
    assert stale_reason(frozen(), lease_s=60) is None  # just started, no lease yet
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.set_trial_system_attr(trial._trial_id, LEASE_ATTR, {
        "trial": trial.number, "host": socket.gethostname(), "pid": dead.pid,
        "beat": time.time()})
    assert "is gone" in stale_reason(frozen(), lease_s=60)
    storage.set_trial_system_attr(trial._trial_id, LEASE_ATTR, {
        "trial": trial.number, "host": "other-host", "pid": os.getpid(),
        "beat": time.time() - 100})
    assert "no heartbeat for 100s" in stale_reason(frozen(), lease_s=60)
    assert stale_reason(frozen(), lease_s=1000) is None
    # a lease copied from the trial a retry replaces does not count for the retry
    storage.set_trial_system_attr(trial._trial_id, LEASE_ATTR, {
        "trial": trial.number + 7, "host": socket.gethostname(), "pid": dead.pid,
        "beat": 0.0})
    assert stale_reason(frozen(), lease_s=60) is None


def test_heartbeat_keeps_lease_fresh_and_reaper_requeues_abandoned(tmp_path):
    study = optuna.create_study(storage=open_storage(str(tmp_path / "h.journal")))
    alive = study.ask()
    alive.suggest_int("k", 1, 9)
    beat = Heartbeat(study._storage, alive._trial_id, alive.number, interval=0.1).start()
    abandoned = study.ask()
    abandoned.suggest_int("k", 1, 9)
    study._storage.set_trial_system_attr(abandoned._trial_id, LEASE_ATTR, {
        "trial": abandoned.number, "host": "elsewhere", "pid": 1, "beat": time.time() - 50})
    time.sleep(0.3)
    try:
        assert reap_stale(study, lease_s=5, max_retry=2) == [abandoned.number]
        assert reap_stale(study, lease_s=5, max_retry=2) == []  # once only
    finally:
        beat.stop()
    trials = study.get_trials()
    assert trials[alive.number].state == TrialState.RUNNING
    assert trials[abandoned.number].state == TrialState.FAIL
    assert "lease expired" in trials[abandoned.number].user_attrs["fail_reason"]
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.params == trials[abandoned.number].params
    assert retry.system_attrs["retry_history"] == [abandoned.number]


def test_a_trial_failed_by_a_reaper_killed_before_it_re_enqueued_is_re_enqueued_once(tmp_path):
    """A reaper SIGKILLed between failing a trial and re-enqueueing it leaves the trial failed
    and not retried; the next reap re-enqueues it, and only once."""
    study = optuna.create_study(storage=open_storage(str(tmp_path / "o.journal")))
    orphan = study.ask()
    orphan.suggest_int("k", 1, 9)
    study._storage.set_trial_user_attr(orphan._trial_id, "fail_reason",
                                       "lease expired: worker process 1 on vm is gone")
    study._storage.set_trial_state_values(orphan._trial_id, TrialState.FAIL)
    other = study.ask()  # failed for another reason: not the reaper's to retry
    other.suggest_int("k", 1, 9)
    study._storage.set_trial_state_values(other._trial_id, TrialState.FAIL)
    assert reap_stale(study, lease_s=5, max_retry=2) == []
    assert reap_stale(study, lease_s=5, max_retry=2) == []
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].system_attrs["retry_history"] == [orphan.number]
    assert waiting[0].params == study.get_trials()[orphan.number].params


def test_worker_seeds_differ_per_worker_and_per_rerun():
    seeds = {worker_seed(0, w, n) for w in range(4) for n in (0, 10)}
    assert len(seeds) == 8


# ------------------------------------------------------------------ storage checks
def test_a_torn_journal_tail_is_cut_to_the_last_record_with_a_backup(tmp_path):
    from harness.sweep.storage import repair_torn_tail

    journal = tmp_path / "study.journal"
    storage = open_storage(str(journal))
    optuna.create_study(study_name="s", storage=storage).optimize(lambda t: 1.0, n_trials=2)
    whole = journal.read_bytes()
    assert repair_torn_tail(journal) is None  # an intact journal is left alone
    journal.write_bytes(whole + b'{"op_code":7,"st')
    message = repair_torn_tail(journal)
    assert message is not None and "16 bytes cut" in message
    assert journal.read_bytes() == whole
    (backup,) = tmp_path.glob("study.journal.torn-*.bak")
    assert backup.read_bytes() == whole + b'{"op_code":7,"st'
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    study.optimize(lambda t: 2.0, n_trials=1)  # appending works again
    assert len(study.trials) == 3


def test_a_damaged_record_followed_by_good_ones_is_refused(tmp_path):
    from harness.sweep.storage import repair_torn_tail

    journal = tmp_path / "study.journal"
    optuna.create_study(study_name="s", storage=open_storage(str(journal))).optimize(
        lambda t: 1.0, n_trials=1)
    lines = journal.read_bytes().split(b"\n")
    lines.insert(2, b'{"op_code":7,"st')
    journal.write_bytes(b"\n".join(lines))
    before = journal.read_bytes()
    with pytest.raises(StorageError, match="line 3 is not a journal record"):
        repair_torn_tail(journal)
    assert journal.read_bytes() == before


def test_storage_urls_are_printed_without_their_password():
    from harness.sweep.study import masked

    assert masked("postgresql://alice:s3cret@db:5432/x") == "postgresql://alice:***@db:5432/x"
    assert masked("postgresql://alice@db/x") == "postgresql://alice@db/x"
    assert masked("results/t/study.journal") == "results/t/study.journal"
