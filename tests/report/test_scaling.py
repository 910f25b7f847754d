import numpy as np
import pandas as pd
import pytest

from harness.report.scaling import fit_joint, fit_per_k, fit_power_law


def test_power_law_fit_recovers_a_known_exponent_within_5_percent():
    rng = np.random.default_rng(0)
    n = np.array([256, 512, 1024, 2048, 4096, 8192, 16384])
    fvu = 2.5 * n ** -0.3 * np.exp(rng.normal(0, 0.02, len(n)))
    fit = fit_power_law(n, fvu)
    assert fit.exponent == pytest.approx(-0.3, rel=0.05)
    assert fit.exponent_ci[0] < -0.3 < fit.exponent_ci[1]
    assert fit.coefficient == pytest.approx(2.5, rel=0.2)
    assert fit.r2_log > 0.99
    assert fit.unreliable is None  # 7 sizes over 64x, a tight interval
    assert fit.n_span == pytest.approx(64)


def test_a_fit_whose_interval_is_wider_than_its_estimate_is_flagged():
    """The quickstart's case: a near-zero exponent with a huge interval."""
    fit = fit_power_law([128, 256, 512, 1024], [0.30, 0.20, 0.32, 0.21])
    assert fit.exponent_ci[1] - fit.exponent_ci[0] > abs(fit.exponent)
    assert "wider than itself" in fit.unreliable
    assert "spanning 16x or more" in fit.advice and "4 spanning 8x" in fit.advice


def test_power_law_needs_three_sizes():
    with pytest.raises(ValueError, match="at least 3 distinct"):
        fit_power_law([256, 512, 512], [0.2, 0.1, 0.11])


def _best(rows):
    return pd.DataFrame(rows, columns=["n_latents", "k", "final_fvu"])


def test_joint_fit_recovers_the_generating_law():
    truth = dict(alpha=0.5, beta_k=-0.6, beta_n=-0.25, gamma=0.02, zeta=-4.0, eta=-0.2)
    rows = []
    for k in (8, 16, 32, 64):
        for n in (1024, 2048, 4096, 8192, 16384):
            first = (truth["alpha"] + truth["beta_k"] * np.log(k) + truth["beta_n"] * np.log(n)
                     + truth["gamma"] * np.log(k) * np.log(n))
            rows.append((n, k, np.exp(first) + np.exp(truth["zeta"] + truth["eta"] * np.log(k))))
    joint = fit_joint(_best(rows))
    assert joint is not None and joint.rmse_log < 1e-3
    assert joint.unreliable is None and (joint.n_ks, joint.n_sizes) == (4, 5)
    # a size between the fitted ones is predicted as the generating law says
    expected = (np.exp(truth["alpha"] + truth["beta_k"] * np.log(24)
                       + truth["beta_n"] * np.log(3000)
                       + truth["gamma"] * np.log(24) * np.log(3000))
                + np.exp(truth["zeta"] + truth["eta"] * np.log(24)))
    assert joint.predict(np.array([3000.0]), np.array([24.0]))[0] == pytest.approx(expected,
                                                                                   rel=1e-2)
    per_k = fit_per_k(_best(rows))
    assert [f.k for f in per_k] == [8, 16, 32, 64]


def test_joint_fit_declines_a_single_k():
    assert fit_joint(_best([(n, 8, 0.1 * n ** -0.2) for n in (64, 128, 256, 512)])) is None


def test_a_joint_fit_on_few_noisy_sizes_is_flagged():
    rng = np.random.default_rng(1)
    rows = [(n, k, 0.5 * n ** -0.2 * k ** -0.5 * np.exp(rng.normal(0, 0.2)))
            for k in (4, 8) for n in (64, 128, 256, 512)]
    joint = fit_joint(_best(rows))
    assert joint is not None
    assert "8 points for 6 parameters" in joint.unreliable
    assert "this study: 2 k x 4 n_latents, 8 sizes" in joint.advice


def test_the_scaling_plot_keeps_its_note_and_legend_off_the_data():
    """Its title fits the figure and its legend covers none of the axes, with long labels and
    an unreliable fit's note."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from harness.report.plots import STYLE, scaling_figure
    from harness.report.scaling import PowerLawFit

    best = pd.DataFrame({"k": [8] * 3 + [32] * 3, "n_latents": [256, 512, 1024] * 2,
                         "final_fvu": [0.3, 0.25, 0.2, 0.2, 0.15, 0.12]})
    fits = [PowerLawFit(k=8, coefficient=1.0, exponent=-0.26, exponent_ci=(-0.9, 0.4),
                        n_points=3, r2_log=0.9, n_span=4.0),
            PowerLawFit(k=32, coefficient=1.0, exponent=-0.37, exponent_ci=(-0.4, -0.34),
                        n_points=3, r2_log=0.99, n_span=4.0)]
    assert fits[0].unreliable  # the note above the axes is drawn
    with matplotlib.pyplot.rc_context(STYLE):
        fig = scaling_figure(best, fits)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        whole = fig.bbox
        (ax,) = fig.axes
        title = ax.title.get_window_extent(renderer)
        assert ax.get_title() and whole.x0 <= title.x0 and title.x1 <= whole.x1
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        assert not box.overlaps(ax.get_window_extent(renderer))
        assert whole.y0 <= box.y0 and box.x1 <= whole.x1
        matplotlib.pyplot.close(fig)
