"""What a reader of the figures sees: every point inside labelled ticks, a legend with only the
entries that occur, and the learning rate plotted as the space sampled it."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from harness.report.plots import (  # noqa: E402
    STYLE,
    _labelled,
    _labelled_limits,
    learning_curves_figure,
    pareto_figure,
    plot_lr_sensitivity,
    plot_pareto,
)


def _is_labelled(value: float, lo: float, hi: float) -> bool:
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
    return mantissa in _labelled(math.log10(hi / lo))


@pytest.mark.parametrize("lo, hi", [(0.0123, 0.87), (3.1, 170.0), (0.041, 0.052), (7, 7000),
                                    (0.2, 0.5)])
def test_log_limits_end_at_labelled_values_around_the_data(lo, hi):
    a, b = _labelled_limits(lo, hi)
    assert a <= lo and b >= hi
    assert _is_labelled(a, a, b) and _is_labelled(b, a, b), (a, b)
    assert b / a <= 10 * hi / lo * 10  # never more than a decade beyond each side


def test_the_pareto_plot_has_every_point_inside_its_labelled_limits(tmp_path):
    df = pd.DataFrame([{"state": "complete", "expansion": e, "final_l0": l0, "final_fvu": f}
                       for e, l0, f in [(2, 7.3, 0.31), (4, 30.0, 0.12), (8, 61.0, 0.083)]])
    with plt.rc_context(STYLE):
        plot_pareto(df, tmp_path)
        fig = pareto_figure(df)
        ax = fig.axes[0]
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        plt.close(fig)
    assert x0 <= 7.3 and x1 >= 61 and y0 <= 0.083 and y1 >= 0.31
    assert _is_labelled(y1, y0, y1) and _is_labelled(x1, x0, x1)


def _curves(tmp_path, states):
    rows = []
    for number, state in enumerate(states):
        folder = tmp_path / str(number)
        folder.mkdir()
        (folder / "history.json").write_text(json.dumps({"tokens": [100, 200],
                                                         "r2": [0.3, 0.6]}))
        rows.append({"number": number, "state": state, "sae_path": str(folder)})
    return pd.DataFrame(rows)


def test_the_learning_curves_legend_shows_only_what_occurs(tmp_path):
    with plt.rc_context(STYLE):
        fig = learning_curves_figure(_curves(tmp_path, ["complete", "complete"]))
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        plt.close(fig)
    assert labels == ["a complete trial"]  # nothing was pruned: no pruned entries


def test_lr_sensitivity_plots_lr_scale_where_the_space_sampled_it(tmp_path, monkeypatch):
    df = pd.DataFrame([{"state": "complete", "k": 8, "lr": lr, "param_lr_scale": s,
                        "final_fvu": f} for lr, s, f in [(1e-3, 0.5, 0.2), (4e-3, 2.0, 0.3)]])
    seen = {}
    real = plt.Axes.set_xlabel

    def record(ax, label, *args, **kwargs):
        seen["x"] = label
        return real(ax, label, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "set_xlabel", record)
    plot_lr_sensitivity(df, tmp_path)
    assert seen["x"].startswith("lr_scale")
    plot_lr_sensitivity(df.drop(columns="param_lr_scale"), tmp_path)
    assert seen["x"] == "learning rate"
