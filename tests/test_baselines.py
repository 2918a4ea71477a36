"""Baselines of method.md section 6 (used by the benchmarks): forwards and surrogate gradients."""
import math

import torch

from erbnn_ext import baselines as B, quantizers as Q


def test_ede_params_schedule():
    t0, k0 = B.ede_params(0, 10)
    t1, k1 = B.ede_params(10, 10)
    assert math.isclose(t0, 1e-3) and math.isclose(k0, 1e3)
    assert math.isclose(t1, 10.0) and k1 == 1.0
    t_mid, _ = B.ede_params(5, 10, t_min=1e-1)
    assert math.isclose(t_mid, 1.0)


def test_irnet_train_forward_matches_forward():
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    assert torch.equal(B.irnet_binarize_weight_train(w, 1.0, 1.0), B.irnet_binarize_weight(w))
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(B.irnet_binarize_activation_train(x, 1.0, 1.0), torch.sign(x))
    assert torch.equal(B.irnet_binarize_activation(x), torch.sign(x))


def test_ede_gradient():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    g = torch.randn(50, dtype=torch.float64)
    t, k = 0.7, 1 / 0.7
    (dx,) = torch.autograd.grad(Q.EDEFn.apply(x, t, k), x, g)
    assert torch.allclose(dx, g * k * t * (1 - torch.tanh(t * x.detach()) ** 2))


def test_irnet_weight_gradient_goes_through_standardisation():
    # EDE's derivative k t (1 - tanh(t x)^2) is that of k tanh(t x): autograd of s * k * tanh(t * What)
    # (mean and std differentiable, s detached) must give the same weight gradient
    w = torch.randn(4, 18, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 18, dtype=torch.float64)
    t, k = 0.5, 2.0
    (dw,) = torch.autograd.grad(B.irnet_binarize_weight_train(w, t, k), w, g)
    rows = w
    what = (rows - rows.mean(1, keepdim=True)) / rows.std(1, keepdim=True)
    s = torch.pow(2, torch.round(torch.log2(what.abs().mean(1, keepdim=True)))).detach()
    (want,) = torch.autograd.grad(s * k * torch.tanh(t * what), w, g)
    assert torch.allclose(dw, want)


def test_recu_train_forward_matches_forward():
    w = torch.randn(16, 8, 3, 3)
    for tau in (0.85, 0.99):
        assert torch.equal(B.recu_binarize_weight_train(w, tau), B.recu_binarize_weight(w, tau))
    x = torch.randn(3, 8, 4, 4) * 5 + 1
    xs = x / torch.sqrt(x.var((1, 2, 3), keepdim=True) + 1e-5)
    assert torch.equal(B.recu_binarize_activation(x), torch.sign(xs))
    assert torch.equal(B.recu_binarize_activation_train(x), torch.sign(xs))


def test_recu_weight_gradient_is_ste_through_clamp():
    w = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, 10, dtype=torch.float64)
    (dw,) = torch.autograd.grad(B.recu_binarize_weight_train(w, 0.85), w, g)
    w0 = w - w.mean()
    w1 = w0 / (torch.sqrt(w0.var() + 1e-5) / (2 * 2 ** 0.5))
    q = (-w1.abs().mean() * math.log(2 - 2 * 0.85)).detach()
    (want,) = torch.autograd.grad(torch.clamp(w1, -q, q), w, g)
    assert torch.allclose(dw, want)


def test_recu_activation_surrogate():
    x = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64, requires_grad=True)
    g = torch.randn(31, dtype=torch.float64)
    (dx,) = torch.autograd.grad(Q.ReCUActFn.apply(x), x, g)
    assert torch.allclose(dx, g * (2 - 2 * x.detach().abs()).clamp_min(0))
