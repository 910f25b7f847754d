"""Each activation's front and its values at matched L0: log-log interpolation on the front,
never extrapolated; the figure for FVU and for ΔCE."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest

from harness.report.architectures import at_matched_l0, fronts, plot_architectures


def _trials() -> pd.DataFrame:
    rows = [  # (activation, L0, FVU, ΔCE); the 0.3 at L0 20 is dominated, never on the front
        ("topk", 16, 0.16, 0.40), ("topk", 64, 0.04, 0.10), ("topk", 20, 0.30, 0.50),
        ("relu", 8, 0.50, 0.90), ("relu", 32, 0.20, 0.30),
    ]
    return pd.DataFrame([{"state": "complete", "activation": a, "final_l0": l0,
                          "final_fvu": fvu, "delta_ce": dce} for a, l0, fvu, dce in rows]
                        + [{"state": "pruned", "activation": "topk", "final_l0": 32,
                            "final_fvu": 0.01, "delta_ce": 0.01}])


def test_fronts_keep_each_activations_undominated_complete_trials():
    front = fronts(_trials())
    assert list(front["topk"]["final_l0"]) == [16, 64]  # the pruned trial never counts
    assert list(front["relu"]["final_l0"]) == [8, 32]


def test_values_at_matched_l0_are_log_log_interpolations_on_the_front():
    table = at_matched_l0(_trials(), l0s=(16, 32, 64)).set_index("activation")
    # topk at L0 32: halfway in log between 16 and 64, so the geometric mean of the FVUs
    assert table.loc["topk", "fvu@L0=32"] == pytest.approx(math.sqrt(0.16 * 0.04))
    assert table.loc["topk", "fvu@L0=16"] == pytest.approx(0.16)
    assert table.loc["relu", "fvu@L0=16"] == pytest.approx(math.sqrt(0.5 * 0.2))
    assert math.isnan(table.loc["relu", "fvu@L0=64"])  # beyond its front: not extrapolated
    assert table.loc["topk", "trials"] == 3 and table.loc["topk", "front"] == 2
    dce = at_matched_l0(_trials(), y="delta_ce", l0s=(32,)).set_index("activation")
    assert dce.loc["topk", "delta_ce@L0=32"] == pytest.approx(math.sqrt(0.4 * 0.1))


def test_the_figure_is_drawn_for_fvu_and_delta_ce_without_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = plot_architectures(_trials(), tmp_path)
        paths += plot_architectures(_trials(), tmp_path, y="delta_ce", name="architectures_dce")
    assert sorted(p.name for p in paths) == ["architectures.pdf", "architectures.png",
                                             "architectures_dce.pdf", "architectures_dce.png"]


def test_the_matched_l0_values_come_from_the_data():
    from harness.report.architectures import matched_l0s

    assert matched_l0s(_trials()) == [16, 32]  # the powers of two both fronts cover: 16-32
    low = _trials().assign(final_l0=lambda d: d["final_l0"] / 8)  # every L0 below 16
    values = matched_l0s(low)
    assert values == [2, 4]
    table = at_matched_l0(low).set_index("activation")
    assert not table.filter(like="fvu@L0=").isna().all().all()  # no longer all NaN
    assert matched_l0s(_trials().iloc[:0]) == []
