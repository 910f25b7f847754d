"""JumpReLU: its straight-through threshold gradients against finite differences of the
surrogate, the sparse step against the dense one, and the L0 penalty moving L0."""

from __future__ import annotations

import pytest
import torch
from penalty_runs import trained

from harness import TopKSae
from harness.core.activations import base
from harness.core.activations.jumprelu import JumpReluFunction, StepFunction


def _samples(n: int = 200_000) -> torch.Tensor:
    return torch.rand(n, dtype=torch.float64) * 2.0  # uniform on [0, 2]: density 1/2


def test_step_threshold_gradient_is_the_central_difference_of_the_mean_count():
    z, eps = _samples(), 0.05
    theta = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    StepFunction.apply(z, theta.expand_as(z), eps).mean().backward()

    def count(t: float) -> float:
        return float((z > t).double().mean())

    # the rectangle kernel of width eps is the central difference with step eps / 2
    h = eps / 2
    finite = (count(0.8 + h) - count(0.8 - h)) / (2 * h)
    assert abs(float(theta.grad) - finite) < 1e-9
    assert abs(finite + 0.5) < 0.02  # minus the density at theta


def test_jumprelu_threshold_gradient_matches_a_finite_difference_of_the_loss():
    z, eps = _samples(), 0.05
    g = 1.0 + z  # a downstream gradient that varies with z
    theta = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    (JumpReluFunction.apply(z, theta.expand_as(z), eps) * g).mean().backward()

    def loss(t: float) -> float:
        return float((z * (z > t) * g).mean())

    h = eps / 2
    finite = (loss(0.8 + h) - loss(0.8 - h)) / (2 * h)
    # z sits within h of theta in the window, the estimator uses theta: equal to O(h / theta)
    assert abs(float(theta.grad) - finite) < 0.05 * abs(finite)
    assert abs(finite + 0.8 * 1.8 * 0.5) < 0.05  # -theta g(theta) p(theta)
    # and z's own gradient is the step: H(z - theta) g
    zz = z[:1000].clone().requires_grad_(True)
    (JumpReluFunction.apply(zz, theta.detach().expand(1000), eps) * g[:1000]).sum().backward()
    assert torch.equal(zz.grad, (z[:1000] > 0.8) * g[:1000])


def _grads(sparse: bool, shift: float, x: torch.Tensor) -> tuple[dict, int]:
    sae = TopKSae(256, 16, None, seed=3, activation="jumprelu", dtype=torch.float64,
                  activation_options={"jumprelu_init_threshold": 0.5})
    sae.activation_fn.begin_training(sae, 1.0)
    with torch.no_grad():
        sae.log_threshold.add_(torch.linspace(-0.3, 0.6, 256, dtype=torch.float64) + shift)
    sae.sparse_backward = sparse
    out = sae(x)
    loss = ((out.reconstruction - x) ** 2).mean() + 0.01 * sae.activation_fn.l0_penalty(sae, out)
    loss.backward()
    return {name: p.grad.clone() for name, p in sae.named_parameters()}, out.top_values.shape[1]


@pytest.mark.parametrize("shift", [1.5, -3.0])  # few latents near theta; most (a dense step)
def test_the_gathered_step_gives_autograds_gradients(shift: float, monkeypatch):
    x = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    sparse, width = _grads(True, shift, x)
    assert width < 32 if shift > 0 else width == 256
    # the reference: autograd through top-m of every latent (never dense)
    monkeypatch.setattr(base, "DENSE_SHARE", 1.0)
    dense, reference_width = _grads(False, shift, x)
    assert reference_width <= 256
    for name in sparse:
        torch.testing.assert_close(sparse[name], dense[name], msg=name)
    assert sparse["log_threshold"].abs().sum() > 0


def test_a_larger_l0_penalty_gives_a_lower_l0(synthetic_store, tmp_path):
    l0s = []
    for l0_lambda in (1e-3, 1e-1):
        _, history = trained(synthetic_store, tmp_path / str(l0_lambda), "jumprelu",
                             l0_lambda=l0_lambda)
        l0s.append(history["l0"][-1])
    assert l0s[1] < 0.5 * l0s[0], l0s
