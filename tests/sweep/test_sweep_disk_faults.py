"""Files and disks that fail under a sweep, through the real `python -m harness.sweep`: a torn or
foreign journal, a storage that stops taking writes, a trials folder that cannot be written at
the start or at save time. The console names the cause and nothing finished is lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from optuna.trial import TrialState
from scripts_run import sweep_here
from spaces import load, one_trial, write_space

from harness.sweep.trial_record import TrialRecord


def test_a_torn_journal_tail_is_repaired_with_a_backup_and_the_study_goes_on(
        synthetic_store, copy_finished, tmp_path, capsys):
    results = copy_finished
    path = write_space(tmp_path / "s.yaml", one_trial(synthetic_store, results))
    journal = results / "t" / "study.journal"
    whole = journal.read_bytes()
    with open(journal, "ab") as f:
        f.write(b'{"op_code":7,"st')  # a crash in the middle of a write
    proc = sweep_here(capsys, str(path), "--n-trials", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"repaired {journal}: its last record was torn by a crash mid-write (16 bytes cut" \
        in proc.stdout
    (backup,) = journal.parent.glob("study.journal.torn-*.bak")
    assert backup.read_bytes() == whole + b'{"op_code":7,"st'
    assert journal.read_bytes().startswith(whole)
    trials = load(results).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def _file_size_limited(limit: int) -> None:
    """preexec_fn: no file of this process and its children grows past `limit` bytes (a write
    past it fails with EFBIG, as on a full disk with ENOSPC)."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_storage_file_that_is_not_a_journal_is_refused_and_left_as_it_is(
        synthetic_store, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a study\n")
    path = write_space(tmp_path / "s.yaml", one_trial(synthetic_store, tmp_path / "results"))
    proc = sweep_here(capsys, str(path), "--storage", str(notes))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{notes}: not an Optuna journal (no record in its 22 bytes)" in proc.stderr
    assert notes.read_text() == "my notes, not a study\n"
    assert not (tmp_path / "results").exists()


def test_a_storage_that_stops_taking_writes_names_the_cause_and_loses_nothing(
        synthetic_store, copy_finished, tmp_path, capsys):
    """The study journal cannot grow mid-trial (a full disk): the console names the error, the
    trial left RUNNING is released by the next run, and the finished trial is kept."""
    import shutil

    from harness.sweep.space import load_space
    from harness.sweep.study import create_study

    results = copy_finished
    path = write_space(tmp_path / "s.yaml", one_trial(synthetic_store, results))
    journal = results / "t" / "study.journal"
    first = load(results).trials[0]
    # what the sweep's own start writes on a resume, measured on a copy: the limit lets it
    # through and stops the trial's first records
    scratch = tmp_path / "scratch"
    shutil.copytree(results, scratch)
    create_study(load_space(path, overrides={"budget": {"n_trials": 2}}),
                 str(scratch / "t" / "study.journal"))
    limit = (scratch / "t" / "study.journal").stat().st_size + 600
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "--n-trials", "2"],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: _file_size_limited(limit))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stopped: worker 0 (exit 1): OSError: [Errno 27] File too large" in proc.stderr
    assert ("the trials left running could not be released now (OSError: [Errno 27] File too "
            "large); the next run re-enqueues them") in proc.stderr
    assert journal.stat().st_size == limit
    rerun = sweep_here(capsys, str(path), "--n-trials", "2")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"repaired {journal}" in rerun.stdout
    assert "re-enqueued trials abandoned by an earlier run: [1]" in rerun.stdout
    study = load(results)
    done = study.get_trials(states=[TrialState.COMPLETE])
    assert len(done) == 2 and done[0].number == 0 and done[0].values == first.values
    assert study.trials[1].state == TrialState.FAIL  # the abandoned one, retried as trial 2


def test_a_trials_folder_that_cannot_be_written_is_refused_before_the_sweep(
        synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    (results / "t").mkdir(parents=True)
    (results / "t" / "trials").write_text("a file where the trial folders go")
    path = write_space(tmp_path / "s.yaml", one_trial(synthetic_store, results))
    proc = sweep_here(capsys, str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"--results / results_dir: {results / 't' / 'trials'} cannot be created: "
            f"{results / 't' / 'trials'} is not a folder") in proc.stderr
    assert sorted(p.name for p in (results / "t").iterdir()) == ["trials"]  # no study made


def test_a_trial_that_cannot_be_saved_stops_the_sweep_and_runs_again_once_fixed(
        synthetic_store, tmp_path, capsys):
    """A trial's folder cannot be written mid-sweep: the trial keeps its weights elsewhere, is
    re-enqueued (not spent) and the sweep stops saying why; once fixed, the re-run saves it.
    With its retries used up, the console says a trial was dropped."""
    results = tmp_path / "results"
    (results / "t" / "trials").mkdir(parents=True)
    (results / "t" / "trials" / "0000").write_text("a file where trial 0's folder goes")
    path = write_space(tmp_path / "s.yaml", one_trial(synthetic_store, results,
                                                      budget={"n_trials": 2}))
    proc = sweep_here(capsys, str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stopped: an output location stopped accepting writes" in proc.stderr
    assert "trial(s) [0] could not be saved and were re-enqueued" in proc.stderr
    assert "save failed" in proc.stdout
    study = load(results)
    (failed,) = study.get_trials(states=[TrialState.FAIL])  # one trial, not the whole budget
    record = TrialRecord.from_frozen(failed)
    assert record.fail_reason.startswith(f"save failed: could not save to "
                                         f"{results / 't' / 'trials' / '0000'}")
    assert f"the trained SAE was saved to {record.saved_to} instead" in record.fail_reason
    kept = Path(record.saved_to)
    assert (kept / "sae_weights.safetensors").exists() and (kept / "history.json").exists()
    assert record.final("r2") is not None  # what it measured is still recorded
    assert len(study.get_trials(states=[TrialState.WAITING])) == 1  # re-enqueued
    # the re-run: the retry (trial 1) saves; the next fresh trial (2) cannot, and with no
    # retries left the console says it was dropped, not re-enqueued
    (results / "t" / "trials" / "0002").write_text("a file where trial 2's folder goes")
    space = one_trial(synthetic_store, results, budget={"n_trials": 2})
    space["faults"]["max_retry"] = 0
    rerun = sweep_here(capsys, str(write_space(tmp_path / "s0.yaml", space)))
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    assert ("trial(s) [2] could not be saved and were NOT re-enqueued: their configuration had "
            "its faults.max_retry = 0 retries") in rerun.stderr
    assert "re-enqueued (their weights" not in rerun.stderr  # trial 0 was an earlier run's
    study = load(results)
    (done,) = study.get_trials(states=[TrialState.COMPLETE])
    assert done.number == 1 and done.params == failed.params  # the retry, saved this time
    assert not study.get_trials(states=[TrialState.WAITING])
