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
    _recorded_study(synthetic_store, results, tmp_path, [{"metric": "r2",
                                                           "direction": "maximize"}])
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


def _recorded_study(store, results, tmp_path, objectives, fidelity=None, rungs=()):
    """Study "t" made by the sweep's own create_study, with complete trials added by hand (one
    per rung in `rungs`, each with its rung recorded as the sweep records it)."""
    from harness.sweep.space import load_space
    from harness.sweep.study import create_study

    space = tiny_space(store, results, objectives=objectives, wandb={"mode": "off"},
                       params={"expansion": 2, "k": {"type": "categorical", "choices": [2, 4]}},
                       budget={"n_trials": 8})
    if fidelity:
        space["fidelity"] = fidelity
    loaded = load_space(write_space(tmp_path / "source.yaml", space))
    study = create_study(loaded, str(results / "t" / "study.journal"))
    dist = {"k": optuna.distributions.CategoricalDistribution([2, 4])}
    for rung in rungs or [None]:
        attrs = {"tokens_seen": 1000, "r2": 0.9}
        if rung is not None:
            attrs |= {"rung": rung, "fidelity": {"rung": rung, "tokens": 1000 * (rung + 1),
                                                 "root": None, "promoted_from": None}}
        study.add_trial(optuna.trial.create_trial(
            params={"k": 2}, distributions=dist, values=[0.9] * len(objectives),
            user_attrs=attrs))
    return study


def test_a_warm_start_from_a_study_with_other_objective_metrics_is_refused(
        synthetic_store, tmp_path, capsys):
    """Same directions, other metrics: A's R² would be read as B's dead ratio."""
    results = tmp_path / "results"
    _recorded_study(synthetic_store, results, tmp_path,
                    [{"metric": "r2", "direction": "maximize"},
                     {"metric": "l0", "direction": "minimize"}])
    other = tiny_space(synthetic_store, results, wandb={"mode": "off"},
                       study={"name": "b", "warm_start": ["t"]},
                       objectives=[{"metric": "dead_ratio", "direction": "maximize"},
                                   {"metric": "l0", "direction": "minimize"}])
    proc = sweep_here(capsys, str(write_space(tmp_path / "b.yaml", other)))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert ("study.warm_start: 't': its objectives [maximize r2, minimize l0] are not this "
            "space's [maximize dead_ratio, minimize l0]") in proc.stderr
    assert not (results / "b").exists()  # nothing written: no journal, no folder
    assert len(_study(results, "t").trials) == 1  # the source is untouched


def test_a_warm_start_naming_the_study_itself_is_refused_and_leaves_nothing(
        synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    space = tiny_space(synthetic_store, results, wandb={"mode": "off"},
                       study={"name": "t", "warm_start": ["t"]})
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "study.warm_start: 't' is this study itself" in proc.stderr
    assert not results.exists()


def test_a_warm_start_from_a_rung_study_copies_its_full_budget_trials_only(synthetic_store,
                                                                           tmp_path, capsys):
    from harness.sweep.space import load_space
    from harness.sweep.study import create_study

    results = tmp_path / "results"
    r2 = [{"metric": "r2", "direction": "maximize"}]
    _recorded_study(synthetic_store, results, tmp_path, r2,
                    fidelity={"tokens": [1000, 2000], "reduction": 2, "group_by": ["k"]},
                    rungs=[0, 0, 1])
    other = tiny_space(synthetic_store, results, wandb={"mode": "off"}, objectives=r2,
                       study={"name": "b", "warm_start": ["t"]},
                       params={"expansion": 2, "k": {"type": "categorical", "choices": [2, 4]}})
    loaded = load_space(write_space(tmp_path / "b.yaml", other))
    study = create_study(loaded, str(results / "b" / "study.journal"))
    warm = [t for t in study.trials if WARM_ATTR in t.user_attrs]
    assert [t.user_attrs[WARM_ATTR] for t in warm] == ["t:2"]  # the last rung's trial only
    assert "rung" not in warm[0].user_attrs and "fidelity" not in warm[0].user_attrs
    assert study.user_attrs["warm_started"] == {"from": ["t"], "trials": 1, "lower_rungs": 2}
