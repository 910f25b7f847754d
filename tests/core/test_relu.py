"""ReLU + L1: a larger L1 penalty gives a lower L0, the penalty warms up, and a sparse step gives
the dense step's gradients."""

from __future__ import annotations

import pytest
import torch
from penalty_runs import trained

from harness import SaeTrainingConfig, TopKSae
from harness.core.activations import base


def test_a_larger_l1_penalty_gives_a_lower_l0(synthetic_store, tmp_path):
    l0s, r2s = [], []
    for l1_lambda in (1e-3, 1e-1):
        sae, history = trained(synthetic_store, tmp_path / str(l1_lambda), "relu",
                               l1_lambda=l1_lambda)
        l0s.append(history["l0"][-1])
        r2s.append(history["r2"][-1])
        assert sae.k is None
    assert l0s[1] < 0.6 * l0s[0], l0s
    assert r2s[0] > 0.8, r2s


@pytest.mark.parametrize("scale", [1.0, 0.05])  # most latents fire (dense); few (gathered)
def test_the_gathered_step_gives_autograds_gradients(scale: float, monkeypatch):
    x = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads, widths = [], []
    for sparse in (True, False):
        sae = TopKSae(256, 16, None, seed=1, activation="relu", dtype=torch.float64)
        with torch.no_grad():
            sae.b_enc.fill_(-3.0 * (1 - scale))  # a negative bias silences most latents
        sae.sparse_backward = sparse
        if not sparse:
            monkeypatch.setattr(base, "DENSE_SHARE", 1.0)  # autograd through top-m, never dense
        out = sae(x)
        (((out.reconstruction - x) ** 2).mean() + 0.1 * sae.l1_penalty(out)).backward()
        grads.append({name: p.grad.clone() for name, p in sae.named_parameters()})
        widths.append(out.top_values.shape[1])
    assert widths[0] == 256 if scale == 1.0 else widths[0] < 32
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_the_sparsity_penalty_warms_up(synthetic_store, tmp_path):
    from harness.core.training.run import MemberRun

    run = MemberRun.__new__(MemberRun)
    run.cfg = SaeTrainingConfig(sparsity_warmup_fraction=0.1)
    run.total_steps = 100
    weights = []
    for step in (0, 4, 9, 50):
        run.step_count = step
        weights.append(run.sparsity_weight())
    assert weights == [0.1, 0.5, 1.0, 1.0]
