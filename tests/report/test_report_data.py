import numpy as np
import pandas as pd
import pytest

from harness.core.pareto import pareto_mask
from harness.report.data import (
    best_per_group,
    pareto_front,
    pruning_summary,
    tokens_saved,
)


def test_pareto_mask_on_hand_made_points():
    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3), (5, 5), (4, 2), (1, 6)]
    mask = pareto_mask([p[0] for p in pts], [p[1] for p in pts])
    # (3,4) is dominated by (2,3); (5,5) by everything; (4,2) by (4,1); (1,6) by (1,5);
    # the duplicate (2,3) stays on the front with its twin
    assert mask.tolist() == [True, True, False, True, True, False, False, False]
    # the console's multi-objective front: maximise the first, minimise the second
    assert pareto_mask([0.9, 0.8, 0.9], [10, 5, 12], maximize=[True, False]).tolist() == [
        True, True, False]


def _frame(rows):
    return pd.DataFrame(rows, columns=["number", "state", "expansion", "k", "final_r2",
                                       "final_fvu", "final_l0", "prune_rule", "tokens_seen",
                                       "planned_tokens"])


def test_front_and_best_per_group_use_complete_trials_only():
    df = _frame([
        (0, "complete", 2, 4, 0.80, 0.20, 4.0, None, 100, 100),
        (1, "complete", 2, 4, 0.85, 0.15, 4.0, None, 100, 100),
        (2, "complete", 4, 8, 0.90, 0.10, 8.0, None, 100, 100),
        (3, "pruned", 4, 8, 0.99, 0.01, 1.0, "median", 20, 100),
        (4, "failed", 2, 4, np.nan, np.nan, np.nan, None, np.nan, np.nan),
    ])
    assert pareto_front(df)["number"].tolist() == [1, 2]
    best = best_per_group(df, ["expansion", "k"], "r2")
    assert best["number"].tolist() == [1, 2]
    assert best_per_group(df, ["expansion", "k"], "fvu")["number"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="metric must be r2 or fvu"):
        best_per_group(df, ["k"], "l0")


def test_pruning_summary_counts_tokens_saved():
    df = _frame([
        (0, "pruned", 2, 4, 0.1, 0.9, 4.0, "median", 20, 100),
        (1, "pruned", 2, 4, 0.1, 0.9, 4.0, "median", 50, 100),
        (2, "pruned", 2, 4, 0.1, 0.9, 4.0, "dead_features", 70, 100),
        (3, "complete", 2, 4, 0.9, 0.1, 4.0, None, 100, 100),
    ])
    out = pruning_summary(df).set_index("rule")
    assert out.loc["median", "trials"] == 2 and out.loc["median", "tokens_saved"] == 130
    assert list(tokens_saved(df)) == [80, 50, 30, 0]  # per trial: a complete one saves none
    assert out.loc["median", "saved_fraction"] == pytest.approx(130 / 200)
    assert out.loc["dead_features", "tokens_trained"] == 70


def test_a_pruned_curve_is_drawn_whole_unless_it_is_hopeless(tmp_path):
    """The R² axis reaches the lowest curve (-0.5 here) and stops at -1, below which a run is
    drawn to the edge with its cut as a triangle."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from harness.report.plots import R2_FLOOR, STYLE, learning_curves_figure

    rows = []
    for number, (state, r2) in enumerate([("complete", [0.2, 0.6, 0.8]),
                                          ("pruned", [-0.2, -0.5]),
                                          ("pruned", [-3.0, -4.0])]):
        folder = tmp_path / str(number)
        folder.mkdir()
        (folder / "history.json").write_text(json.dumps({"tokens": [100, 200, 300][:len(r2)],
                                                         "r2": r2}))
        rows.append({"number": number, "state": state, "sae_path": str(folder)})
    with matplotlib.pyplot.rc_context(STYLE):
        fig = learning_curves_figure(pd.DataFrame(rows))
        (ax,) = fig.axes
        bottom, top = ax.get_ylim()
        assert bottom == R2_FLOOR and top == 1.0  # the hopeless run sets no lower bottom
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "pruned below the axis" in labels
        matplotlib.pyplot.close(fig)
        rows.pop()  # without the hopeless run: the axis reaches -0.5 and a margin below it
        fig = learning_curves_figure(pd.DataFrame(rows))
        bottom = fig.axes[0].get_ylim()[0]
        assert -0.6 < bottom < -0.5
        matplotlib.pyplot.close(fig)


def test_importance_is_measured_on_the_full_budget_trials_of_a_rung_study():
    """First-rung results depend on b alone, full-budget ones on a alone: the importance
    report is about the full budget, so a dominates (over every rung both would share it)."""
    import random

    import optuna

    from harness.report.plots import param_importances

    study = optuna.create_study(directions=["maximize"])
    study.set_user_attr("space", {"fidelity": {"tokens": [100, 200]}})
    dists = {n: optuna.distributions.FloatDistribution(0, 1) for n in "ab"}
    rng = random.Random(0)
    for _ in range(40):
        a, b = rng.random(), rng.random()
        for rung, value in ((0, b), (1, a)):
            study.add_trial(optuna.trial.create_trial(
                params={"a": a, "b": b}, distributions=dists, value=value,
                user_attrs={"rung": rung, "final_r2": value}))
    importances = param_importances(study, "r2")
    assert importances["a"] > 0.9 > importances["b"]
    every = param_importances(study, "r2", full_budget_only=False)
    assert every["a"] < 0.9  # what the report showed before: b's first-rung effect mixed in
