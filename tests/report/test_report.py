"""The report on a real small study produced by the sweep CLI on synthetic data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pandas as pd
import pytest
from scripts_run import report_here
from spaces import tiny_space, write_space

from harness.report import build_report, load_trials
from harness.report.arguments import build_parser
from harness.sweep.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]
PLOTS = ("pareto", "learning_curves", "importance", "lr_sensitivity", "scaling")


@pytest.fixture(scope="session")
def study_results(synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 grid trials: 3 sizes x 2 seeds x lr: complete (3e-3, 1e-2), pruned by the R2 floor
    (lr 1) and failed (lr 30 diverges)."""
    tmp = tmp_path_factory.mktemp("report_study")
    results = tmp / "results"
    space = tiny_space(
        synthetic_store, results,
        params={"expansion": {"type": "categorical", "choices": [2, 4, 8]}, "k": 4,
                "lr": {"type": "categorical", "choices": [3e-3, 1e-2, 1.0, 30.0]},
                "seed": {"type": "categorical", "choices": [0, 1]}},
        sampler={"type": "grid"},
        pruner={"type": "none", "r2_floor": {"min_r2": 0.0, "warmup_steps": 5}},
        budget={"n_trials": 24})
    proc = subprocess.run([sys.executable, "-m", "harness.sweep",
                           str(write_space(tmp / "space.yaml", space)), "--workers", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return results


def test_load_trials_has_one_row_per_trial_with_values_from_storage(study_results):
    df = load_trials("t", results_dir=study_results)
    storage = open_storage(str(study_results / "t" / "study.journal"))
    trials = {t.number: t for t in optuna.load_study(study_name="t", storage=storage).trials}
    assert len(df) == len(trials) == 24
    assert df["state"].value_counts().to_dict() == {"complete": 12, "pruned": 6, "failed": 6}
    # the grid was covered exactly once, by two workers
    assert df.groupby(["param_expansion", "param_lr", "param_seed"]).size().eq(1).all()
    for _, row in df.iterrows():
        t = trials[row["number"]]
        assert row["param_lr"] == t.params["lr"] and row["seed"] == t.params["seed"]
        if row["state"] == "complete":
            assert row["final_r2"] == t.user_attrs["final_r2"] == row["value_0"]
            assert Path(row["sae_path"], "sae_weights.safetensors").exists()
            assert row["n_latents"] == 16 * row["expansion"]
        elif row["state"] == "pruned":
            assert row["prune_rule"] == "r2_floor" and row["prune_step"] == 5
            assert row["planned_tokens"] > row["tokens_seen"] > 0
        else:
            assert row["fail_reason"].startswith("diverged")
    assert set(df["study"]) == {"t"}


def test_report_writes_every_table_and_plot_without_warnings(study_results, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = build_report(["t"], results_dir=study_results, out=tmp_path / "report")
    relevant = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not relevant, [str(w.message) for w in relevant]
    out = tmp_path / "report"
    for name in PLOTS:
        for ext in ("png", "pdf"):
            path = out / f"{name}.{ext}"
            assert path.exists() and path.stat().st_size > 5000, path
    assert len(pd.read_csv(out / "trials.csv")) == 24
    assert len(pd.read_parquet(out / "trials.parquet")) == 24
    summary = (out / "summary.md").read_text()
    for heading in ("## Best trials", "## Best per (expansion, k)", "## Pareto front",
                    "## Across seeds", "## Pruning", "## Scaling law", "## Failed trials",
                    "![pareto](pareto.png)"):
        assert heading in summary, heading
    assert "| r2_floor |        6 |" in summary
    assert len(report.fits) == 1 and report.fits[0].k == 4 and report.fits[0].n_points == 3
    assert report.fits[0].exponent < 0  # more latents, less unexplained variance
    # 3 sizes spanning 4x: flagged, with the sweep that would settle it
    assert "3 points for 2 parameters" in report.fits[0].unreliable
    assert "| 4 |" in summary and "| no |" in summary
    assert "**Unreliable: k=4.**" in summary
    assert "train 5+ n_latents spanning 16x or more at k=4 (this study: 3 spanning 4x)" in summary


def test_table_tex_compiles(study_results, tmp_path):
    build_report(["t"], results_dir=study_results, out=tmp_path, formats=["tex"])
    tex = (tmp_path / "table.tex").read_text()
    for piece in ("\\toprule", "\\midrule", "\\bottomrule", "\\caption{", "\\label{tab:t-best}",
                  "\\textbf{", "tab:t-scaling", "$k=4$$^\\dagger$", "Unreliable:"):
        assert piece in tex, piece
    if shutil.which("pdflatex") is None:
        assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 2
        pytest.skip("pdflatex not installed: checked the LaTeX structure only")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
                   "\\input{table.tex}\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_several_studies_concatenate_with_a_study_column(study_results, tmp_path):
    other = study_results / "u"
    shutil.copytree(study_results / "t", other)
    storage = open_storage(str(other / "study.journal"))
    optuna.copy_study(from_study_name="t", from_storage=storage, to_storage=storage,
                      to_study_name="u")
    df = load_trials(["t", "u"], storage=str(other / "study.journal"))
    assert df.groupby("study").size().to_dict() == {"t": 24, "u": 24}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.report", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_empty_and_all_failed_studies_give_a_clear_message(tmp_path, capsys):
    journal = str(tmp_path / "s.journal")
    storage = open_storage(journal)
    optuna.create_study(study_name="empty", storage=storage)
    failed = optuna.create_study(study_name="failed", storage=storage)
    for _ in range(2):
        t = failed.ask()
        t.set_user_attr("fail_reason", "diverged: boom")
        failed.tell(t, state=optuna.trial.TrialState.FAIL)
    empty = report_here(capsys, "empty", "--storage", journal, "--out", str(tmp_path / "o"))
    assert empty.returncode == 2 and "has no trials yet" in empty.stderr
    all_failed = report_here(capsys, "failed", "--storage", journal, "--out",
                              str(tmp_path / "o"))
    assert all_failed.returncode == 2 and "has no complete trial" in all_failed.stderr
    assert "diverged: boom" in all_failed.stderr
    nope = report_here(capsys, "nope", "--storage", journal)
    assert nope.returncode == 2 and "no study 'nope'" in nope.stderr and "empty" in nope.stderr
    absent = _cli("absent", "--results", str(tmp_path))
    assert absent.returncode == 2 and "absent/study.journal does not exist" in absent.stderr
    # each says it in a line, none in a traceback (the last through a real interpreter)
    for proc in (empty, all_failed, nope, absent):
        assert "Traceback" not in proc.stderr


def test_every_option_has_help_and_is_documented():
    from scripts_run import documented_flags

    assert documented_flags(build_parser()) == []


def test_report_can_log_tables_and_plots_to_an_offline_wandb_run(study_results, tmp_path):
    from wandb_records import run_contents

    build_report(["t"], results_dir=study_results, out=tmp_path, formats=["md"],
                 wandb_mode="offline")
    logs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    contents = run_contents(logs[0])
    assert contents["run"].job_type == "report" and contents["summary"]["trials"] == 24
    logged = contents["history"][0]
    assert logged["best_per_group._type"] == "table-file"
    assert logged["pareto._type"] == "image-file"


def test_non_finite_metrics_are_left_out_of_plots_with_a_note(tmp_path, capsys):
    """A trial recorded before validation refused degenerate data (r2 = -inf) once crashed the
    report in matplotlib ("Data cannot be log-scaled")."""
    from optuna.distributions import FloatDistribution

    journal = str(tmp_path / "s.journal")
    study = optuna.create_study(study_name="nf", storage=open_storage(journal))
    rows = [(64, 4, 1e-3, 0.8), (128, 4, 2e-3, 0.85), (256, 4, 3e-3, 0.9),
            (64, 8, 4e-3, 0.88), (128, 8, 5e-3, float("-inf"))]
    for n, k, lr, r2 in rows:
        fvu = 1 - r2
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr}, distributions={"lr": FloatDistribution(1e-4, 1e-2, log=True)},
            value=r2, user_attrs={"n_latents": n, "k": k, "lr": lr, "expansion": n / 16,
                                  "final_r2": r2, "final_fvu": fvu, "final_l0": k * 0.9,
                                  "final_dead_ratio": 0.0, "tokens_seen": 1000}))
    proc = report_here(capsys, "nf", "--storage", journal, "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / "o" / "summary.md").read_text()
    assert "1 complete trial(s) with non-finite metrics (trial(s) 4) are left out" in summary
    assert (tmp_path / "o" / "pareto.png").exists()
    assert "-inf" in (tmp_path / "o" / "trials.csv").read_text()  # kept in the data
    degenerate = optuna.create_study(study_name="zero", storage=open_storage(journal))
    for _ in range(3):  # every trial of an all-zero store: nothing can be drawn
        degenerate.add_trial(optuna.trial.create_trial(value=float("-inf"), user_attrs={
            "n_latents": 64, "k": 4, "lr": 1e-3, "final_r2": float("-inf"),
            "final_fvu": float("inf"), "final_l0": 4.0, "final_dead_ratio": 0.0}))
    proc = report_here(capsys, "zero", "--storage", journal, "--out", str(tmp_path / "z"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "3 complete trial(s) with non-finite metrics" in proc.stderr


def test_a_failed_trials_half_saved_folder_is_never_offered_as_an_sae(tmp_path):
    """A trial that failed after part of its save (weights written, then an error) keeps its
    folder, marked FAIL in trial.json; the report points sae_path at finished trials only."""
    from harness import TopKSae
    from harness.sweep.trial_record import TrialRecord

    journal = str(tmp_path / "s.journal")
    study = optuna.create_study(study_name="half", storage=open_storage(journal))
    for number, state in ((0, "COMPLETE"), (1, "FAIL")):
        folder = tmp_path / "trials" / f"{number:04d}"
        TopKSae(8, 4, 2, seed=0).save(folder)
        trial = study.ask()
        TrialRecord(number=number, state=state, trial_dir=str(folder),
                    fail_reason="save failed: disk full" if state == "FAIL" else None,
                    metrics={"final_r2": 0.5}).save(trial)
        if state == "FAIL":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, 0.5)
    df = load_trials("half", storage=journal)
    assert df.loc[0, "sae_path"] == str(tmp_path / "trials" / "0000")
    assert pd.isna(df.loc[1, "sae_path"])
    marked = (tmp_path / "trials" / "0001" / "trial.json").read_text()
    assert '"state": "FAIL"' in marked and "save failed: disk full" in marked


def test_trials_whose_files_are_gone_or_damaged_are_named_and_the_rest_reported(
        synthetic_store, tmp_path, capsys):
    """One trial's folder and the artifacts removed, another's history.json cut short: the
    report names both, makes every table and plot from the rest and exits 0. A journal damaged
    in the middle is named, with exit 2."""
    import shutil

    from scripts_run import sweep_here

    results = tmp_path / "results"
    space = write_space(tmp_path / "s.yaml", tiny_space(
        synthetic_store, results, budget={"n_trials": 3}, wandb={"mode": "off"},
        training={"epochs": 1, "batch_size": 256, "eval_every": 5}))
    assert sweep_here(capsys, str(space)).returncode == 0
    shutil.rmtree(results / "t" / "trials" / "0001")
    shutil.rmtree(results / "t" / "artifacts")
    history = results / "t" / "trials" / "0002" / "history.json"
    history.write_bytes(history.read_bytes()[:100])  # a copy that stopped, a full disk
    proc = report_here(capsys, "t", "--results", str(results), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: trial 1 of t: its SAE is neither in" in proc.stdout
    assert f"note: trial 2 of t is left out: {history}: not valid JSON (cut short?)" \
        in proc.stdout
    assert "trial 0 of t" not in proc.stdout
    table = pd.read_csv(tmp_path / "report" / "trials.csv")
    assert len(table) == 3 and table["corrupt"].notna().sum() == 1  # trials.csv keeps them all
    for name in ("pareto", "learning_curves"):
        assert (tmp_path / "report" / f"{name}.png").is_file()
    journal = results / "t" / "study.journal"
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join([*lines[:3], lines[3][:20], *lines[4:]]))
    proc = report_here(capsys, "t", "--results", str(results), "--out", str(tmp_path / "r2"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {journal}: line 4 is not a journal record" in proc.stderr


def test_an_out_folder_that_cannot_be_created_is_named(study_results, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = report_here(capsys, "t", "--results", str(study_results), "--out",
                       str(blocker / "report"))
    assert proc.returncode == 2
    assert f"error: --out: {blocker / 'report'} cannot be created: {blocker} is not a folder" \
        in proc.stderr
