import numpy as np
import pytest
import torch

from harness.core.metrics import (
    DeadFeatureTracker,
    ReconstructionAccumulator,
    feature_recovery,
    firing_f1,
)


def test_fvu_r2_mse_l0_match_hand_computed_values():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    x_hat = torch.tensor([[1.0, 3.0], [2.0, 4.0], [5.0, 7.0]])
    # mu = (3, 5); sum (x - mu)^2 = (4+0+4) + (9+1+16) = 34; sum err^2 = 1 + 1 + 4 = 6
    acc = ReconstructionAccumulator()
    acc.update(x, x_hat, n_active=7)
    m = acc.result()
    assert m.fvu == pytest.approx(6 / 34)
    assert m.r2 == pytest.approx(1 - 6 / 34)
    assert m.mse == pytest.approx(6 / 6)
    assert m.l0 == pytest.approx(7 / 3)
    assert m.n_tokens == 3


def test_fvu_accumulates_sums_across_batches_not_per_batch_average():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 8, generator=gen) * torch.linspace(0.1, 3, 8) + 5
    x_hat = x + 0.3 * torch.randn(1000, 8, generator=gen)
    acc = ReconstructionAccumulator()
    for lo, hi in [(0, 7), (7, 300), (300, 301), (301, 1000)]:  # uneven batches
        acc.update(x[lo:hi], x_hat[lo:hi], 0)
    xn, xhn = x.double().numpy(), x_hat.double().numpy()
    expected = ((xn - xhn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert acc.result().fvu == pytest.approx(expected, rel=1e-9)
    per_batch = np.mean([((xn[a:b] - xhn[a:b]) ** 2).sum()
                         / ((xn[a:b] - xn[a:b].mean(0)) ** 2).sum()
                         for a, b in [(0, 7), (7, 300), (301, 1000)]])
    assert abs(per_batch - expected) > 1e-3  # the wrong (batched) formula really differs here


def test_fvu_is_exact_on_activations_with_a_large_mean():
    # METRICS.md: a batched formula reads 0.993 where the truth is 0.910 on large-mean data.
    gen = torch.Generator().manual_seed(1)
    x = 1000.0 + torch.randn(4096, 16, generator=gen)
    x_hat = x + 0.3 * torch.randn(4096, 16, generator=gen)
    acc = ReconstructionAccumulator()
    for chunk in range(0, 4096, 512):
        acc.update(x[chunk:chunk + 512], x_hat[chunk:chunk + 512], 0)
    xn, xhn = x.double().numpy(), x_hat.double().numpy()
    truth = 1 - ((xn - xhn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert acc.result().r2 == pytest.approx(truth, abs=1e-9)
    assert 0.9 < truth < 0.93


def test_empty_evaluation_set_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        ReconstructionAccumulator().result()


def test_dead_feature_tracker_planted_case():
    tracker = DeadFeatureTracker(n_latents=5, window=10)
    # 4 tokens: latent 0 fires, latent 1 is chosen but its value is 0 (ReLU) -> does not fire
    tracker.update(torch.tensor([[0, 1]] * 4), torch.tensor([[1.0, 0.0]] * 4))
    assert tracker.count() == 0  # nothing can be dead before `window` tokens
    tracker.update(torch.tensor([[2, 3]] * 6), torch.tensor([[0.5, 0.5]] * 6))
    # T=10: latent 0 last fired at 4 (10-4 < 10), 2 and 3 at 10; 1 and 4 never fired -> dead
    assert tracker.dead_mask().tolist() == [False, True, False, False, True]
    tracker.update(torch.tensor([[2, 3]] * 4), torch.tensor([[0.5, 0.5]] * 4))
    # T=14: latent 0 last fired at token 4, 14 - 4 >= 10 -> dead now
    assert tracker.count() == 3


def test_feature_recovery_hand_case():
    true = torch.eye(3)
    decoder = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, -1.0]])
    r = feature_recovery(true, decoder, threshold=0.7)
    # best cosines: e0 -> 1.0, e1 -> 0.6, e2 -> 0.8
    assert r.mmcs == pytest.approx((1.0 + 0.6 + 0.8) / 3)
    assert r.recovery == pytest.approx(2 / 3)


def test_every_metric_of_the_table_is_defined_in_the_docs():
    from pathlib import Path

    from harness.core.metrics import METRICS, OBJECTIVE_METRICS

    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    for name, m in METRICS.items():
        if m.source != "setup":  # n_latents and k are configuration, not measurements
            assert f"`{name}`" in docs or f"`{name}@c`" in docs, name
        assert m.direction in ("maximize", "minimize")
    assert METRICS["r2"].larger_is_better and not METRICS["fvu"].larger_is_better
    assert METRICS["r2"].better(0.9, 0.8) and METRICS["fvu"].better(0.1, 0.2)
    assert "recovery" not in OBJECTIVE_METRICS and "r2" in OBJECTIVE_METRICS


def test_firing_f1_matches_each_planted_feature_to_its_own_latent():
    gen = torch.Generator().manual_seed(0)
    planted = torch.rand(2000, 6, generator=gen) < 0.2
    order = torch.tensor([4, 0, 7, 2, 6, 1])  # latent j fires exactly when feature i does
    fired = torch.zeros(2000, 8, dtype=torch.bool)
    fired[:, order] = planted
    assert firing_f1(planted, fired) == pytest.approx(1.0)
    # one latent firing for two features can match only one of them (F1 0 for the other's)
    fired[:, order[0]] = planted[:, 0] | planted[:, 1]
    fired[:, order[1]] = False
    score = firing_f1(planted, fired)
    assert 4 / 6 < score < 5 / 6
    noise = torch.rand(2000, 8, generator=gen) < 0.2
    assert firing_f1(planted, noise) < 0.3  # chance: about the firing rate
