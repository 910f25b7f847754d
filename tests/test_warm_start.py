"""Warm start: a new study starts from another study's complete trials on the same activations;
they inform its sampler and cost its budget nothing."""

from __future__ import annotations

import optuna
from scripts_run import sweep_here
from spaces import tiny_space, write_space

from harness.sweep.budget import budget_state
from harness.sweep.warm_start import WARM_ATTR


def _study(results, name):
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / name / "study.journal"))))


def test_a_study_starts_from_the_other_studys_complete_trials(synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    first = tiny_space(synthetic_store, results, budget={"n_trials": 3}, wandb={"mode": "off"})
    assert sweep_here(capsys, str(write_space(tmp_path / "a.yaml", first))).returncode == 0
    second = tiny_space(synthetic_store, results, budget={"n_trials": 2}, wandb={"mode": "off"},
                        study={"name": "b", "seed": 1, "warm_start": ["t"]},
                        sampler={"type": "tpe", "options": {"n_startup_trials": 2}})
    # the first study's k went up to 8; this one samples k up to 6: trials above are not copied
    second["params"]["k"] = {"type": "int", "low": 2, "high": 6}
    proc = sweep_here(capsys, str(write_space(tmp_path / "b.yaml", second)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    source = [t for t in _study(results, "t").trials if t.params["k"] <= 6]
    study = _study(results, "b")
    warm = [t for t in study.trials if WARM_ATTR in t.user_attrs]
    assert sorted(t.user_attrs[WARM_ATTR] for t in warm) == sorted(
        f"t:{t.number}" for t in source)
    assert [t.values for t in warm] == [t.values for t in sorted(source,
                                                                  key=lambda t: t.number)]
    assert len(study.trials) == len(warm) + 2 and budget_state(study).used == 2
    assert f"warm start: {len(warm)} complete trial(s) of t" in proc.stdout


def test_a_warm_start_from_other_activations_is_refused_before_anything_is_written(
        synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    first = tiny_space(synthetic_store, results, budget={"n_trials": 1}, wandb={"mode": "off"})
    assert sweep_here(capsys, str(write_space(tmp_path / "a.yaml", first))).returncode == 0
    for name, warm, message in (
            ("c", "nope", "study.warm_start: 'nope': no such study"),
            ("d", "t", "study.warm_start: 't': it trained on")):
        other = tiny_space(tmp_path / "other_store", results, wandb={"mode": "off"},
                           study={"name": name, "warm_start": [warm]})
        other["data"]["synthetic"] = {"d": 16, "n_tokens": 4000}
        proc = sweep_here(capsys, str(write_space(tmp_path / f"{name}.yaml", other)))
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        journal = results / name / "study.journal"
        assert not journal.exists() or not optuna.get_all_study_names(
            optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(journal))))
