"""ER-BNN modules against an independent implementation of method.md written here, in float64."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import erbnn_ext
from erbnn_ext import nn as enn, reference as R


# ------------------------------------------------------------------ independent implementation (method.md)
class _Surrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b):
        ctx.save_for_backward(x)
        ctx.b = b
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        b = ctx.b
        return g * (max(b, 1.0) / b) * (1 - torch.tanh(x / b) ** 2), None


def _q(x, p):
    a = x.detach().cpu().numpy().ravel()
    halves = [h for h in (-a[a <= 0], a[a >= 0]) if h.size]
    return float(np.float32(max(np.quantile(h, p) for h in halves)))  # the op returns float32


class _MethodState:
    """Ring buffers as method.md describes them: last 100 q per sign, last 1000 batch stats."""

    def __init__(self):
        self.qw, self.qa, self.mu, self.sigma = [], [], [], []

    @staticmethod
    def width(qs):
        return max(float(np.mean(qs[-100:])), 0.1)


def _method_conv(x, w, st, p, stride=1, padding=1, train=True):
    o = w.shape[0]
    rows = w.reshape(o, -1)
    mu = rows.mean(1, keepdim=True)
    alpha = (rows - mu).pow(2).mean(1, keepdim=True).sqrt()
    what = (rows - mu) / alpha
    if train:
        st.qw.append(_q(what, p))
    wb = _Surrogate.apply(what, st.width(st.qw)).reshape(w.shape)
    if train:
        mu_a = x.mean()
        sigma_a = (x - mu_a).reshape(x.shape[0], -1).pow(2).mean(1).sqrt().mean()
        xhat = (x - mu_a) / sigma_a
        st.qa.append(_q(xhat, p))
        st.mu.append(float(mu_a.detach()))
        st.sigma.append(float(sigma_a.detach()))
    else:
        mu_a = torch.tensor(np.mean(st.mu[-1000:]), dtype=x.dtype)
        sigma_a = torch.tensor(np.mean(st.sigma[-1000:]), dtype=x.dtype)
        xhat = (x - mu_a) / sigma_a
    y = sigma_a * _Surrogate.apply(xhat, st.width(st.qa)) + mu_a
    return F.conv2d(y, wb, stride=stride, padding=padding)


# --------------------------------------------------------------------------------------------- tests
BACKENDS = ["reference", "native"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_conv_layer_matches_method_over_steps(backend, stride, padding):
    torch.manual_seed(1)
    layer = enn.ERBinaryConv2d(5, 7, 3, stride=stride, padding=padding, dtype=torch.float64)
    w = layer.weight.detach().clone().requires_grad_()
    st = _MethodState()
    with erbnn_ext.use_backend(backend):
        for step, p in enumerate([0.8, 0.5, 0.2, 0.0]):
            enn.set_percentile(layer, p)
            x = (torch.randn(3, 5, 9, 9, dtype=torch.float64) * 2 + 0.3).requires_grad_()
            x2 = x.detach().clone().requires_grad_()
            out = layer(x)
            ref = _method_conv(x2, w, st, p, stride, padding)
            torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
            g = torch.randn_like(out)
            gx, gw = torch.autograd.grad(out, (x, layer.weight), g)
            rx, rw = torch.autograd.grad(ref, (x2, w), g)
            torch.testing.assert_close(gx, rx, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(gw, rw, rtol=1e-9, atol=1e-10)
            with torch.no_grad():  # a plain SGD step on both copies
                layer.weight -= 0.01 * gw
                w -= 0.01 * rw
        assert layer.act_mean.filled == 4
        assert float(layer.weight_sign.b) == pytest.approx(st.width(st.qw), rel=1e-12)
        layer.eval()
        x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
        torch.testing.assert_close(layer(x), _method_conv(x, w, st, 0.0, stride, padding, train=False),
                                   rtol=1e-10, atol=1e-10)


def test_linear_layer_shapes_and_grad():
    layer = enn.ERBinaryLinear(10, 4, bias=True)
    x = torch.randn(6, 10, requires_grad=True)
    out = layer(x)
    assert out.shape == (6, 4)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad).all()
    assert layer.bias.grad is not None


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("grad", [False, True])
def test_eval_before_training_uses_initial_stats(backend, grad):
    # Like BatchNorm's initial running statistics: mean 0, sigma 1, so the layer sees sign(x).
    layer = enn.ERBinaryConv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(2, 3, 6, 6)
    with erbnn_ext.use_backend(backend), torch.set_grad_enabled(grad):
        y = layer(x)
    w_b = R.restore_weight(layer.weight.detach())[0]
    assert torch.equal(y.detach(), F.conv2d(R.sign(x), w_b, padding=1))
    layer.train()
    with torch.no_grad():
        layer(x)  # no grad: nothing recorded
    assert layer.act_mean.filled == 0


def test_no_grad_training_does_not_record():
    layer = enn.ERBinaryConv2d(3, 4, 3)
    with torch.no_grad():
        layer(torch.randn(2, 3, 5, 5))
    assert layer.act_mean.filled == 0 and layer.weight_sign.q.filled == 0


def test_ring_buffer_wraps_and_keeps_zero():
    ring = enn.RingMean(3)
    for v in [0.0, 3.0, 6.0, 9.0]:
        ring.push(torch.tensor(v))
    assert ring.filled == 3
    assert float(ring.mean()) == pytest.approx(6.0)  # last three: 3, 6, 9
    ring2 = enn.RingMean(5)
    for v in [0.0, 2.0]:
        ring2.push(torch.tensor(v))
    assert float(ring2.mean()) == pytest.approx(1.0)  # a genuine 0.0 counts


def test_approx_sign_module_width_rule():
    s = enn.ApproxSign(buffer_size=2)
    s.set_percentile(0.0)  # q = the smallest magnitude of each half -> tiny -> b floored at 0.1
    x = torch.randn(100, requires_grad=True)
    s(x)
    assert float(s.b) == pytest.approx(0.1)
    s.set_percentile(1.0)  # q = max |x|
    x2 = torch.tensor([-3.0, 2.0], requires_grad=True)
    y = s(x2)
    assert float(s.b) == pytest.approx(max((_q(x, 0.0) + 3.0) / 2, 0.1))  # mean of the two q in the ring
    assert torch.equal(y, torch.tensor([-1.0, 1.0]))
    y.backward(torch.ones(2))
    b = float(s.b)
    expected = (max(b, 1) / b) * (1 - torch.tanh(x2.detach() / b) ** 2)
    torch.testing.assert_close(x2.grad, expected.float())


def test_percentile_validation_and_schedule():
    s = enn.ApproxSign()
    with pytest.raises(ValueError, match="percentile"):
        s.set_percentile(1.5)
    sched = enn.PercentileSchedule(0.8, 0.0, epochs=10)
    assert sched(0) == pytest.approx(0.8) and sched(5) == pytest.approx(0.4) and sched(10) == 0.0
    model = torch.nn.Sequential(enn.ERBinaryConv2d(2, 2, 3), enn.ERBinaryLinear(4, 2))
    assert sched.step(model, 5) == pytest.approx(0.4)
    assert all(float(m.p) == pytest.approx(0.4) for m in model.modules() if isinstance(m, enn.ApproxSign))
    with pytest.raises(ValueError):
        enn.PercentileSchedule(epochs=0)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(3)
    a = enn.ERBinaryConv2d(4, 6, 3, padding=1)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.05)
    xs = [torch.randn(2, 4, 7, 7) for _ in range(6)]

    def step(m, opt, x):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()

    for x in xs[:3]:
        step(a, opt_a, x)
    b = enn.ERBinaryConv2d(4, 6, 3, padding=1)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05)
    opt_b.load_state_dict(opt_a.state_dict())
    for x in xs[3:]:
        step(a, opt_a, x)
        step(b, opt_b, x)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert b.act_mean.filled == a.act_mean.filled == 6


def test_rprelu():
    m = enn.RPReLU(3)
    with torch.no_grad():
        m.shift_in.copy_(torch.tensor([1.0, 0.0, -1.0]))
        m.shift_out.copy_(torch.tensor([0.5, 0.5, 0.5]))
    x = torch.zeros(1, 3, 1, 1)
    torch.testing.assert_close(m(x).flatten(), torch.tensor([1.5, 0.5, 0.25]))
    with pytest.raises(ValueError, match="RPReLU"):
        m(torch.zeros(1, 4, 1, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (3, 6), (2, 6, 7)])
def test_rprelu_equals_prelu_form(dtype, shape):
    """The relu form gives torch's prelu bit for bit forward, and the same gradients away from z == 0."""
    m = enn.RPReLU(6).to(dtype)
    with torch.no_grad():
        for t in (m.shift_in, m.prelu.weight, m.shift_out):
            t.copy_(torch.randn(6))
    view = (1, -1) + (1,) * (len(shape) - 2)
    x = torch.randn(shape).to(dtype)
    x = torch.where(x + m.shift_in.detach().view(view) == 0, x + 0.5, x).requires_grad_()  # no z == 0 (below)
    ref = torch.nn.functional.prelu(x + m.shift_in.view(view), m.prelu.weight) + m.shift_out.view(view)
    got = m(x)
    assert got.dtype == dtype and torch.equal(got, ref)
    g = torch.randn_like(got)
    want = torch.autograd.grad(ref, [x, m.shift_in, m.prelu.weight, m.shift_out], g)
    have = torch.autograd.grad(got, [x, m.shift_in, m.prelu.weight, m.shift_out], g)
    tol = {torch.bfloat16: 2e-2}.get(dtype, 1e-5)
    for a, b in zip(have, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_rprelu_gradient_at_zero_is_relus():
    """At z == 0 exactly the relu form's input gradient is 0 (documented), torch's prelu gives slope * g."""
    m = enn.RPReLU(2)
    x = torch.zeros(1, 2, 1, 1, requires_grad=True)
    m(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_rprelu_single_slope():
    m = enn.RPReLU(4)
    m.prelu = torch.nn.PReLU(1, init=0.1)  # one shared slope, as nn.PReLU() has
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(m(x), torch.nn.functional.prelu(x, m.prelu.weight), rtol=0, atol=0)


def test_binarize_replaces_inner_layers():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=True), torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 16), torch.nn.Linear(16, 10))
    w = model[2].weight.detach().clone()
    enn.binarize_(model)
    assert type(model[0]) is torch.nn.Conv2d and type(model[5]) is torch.nn.Linear
    assert isinstance(model[2], enn.ERBinaryConv2d) and isinstance(model[4], enn.ERBinaryLinear)
    assert torch.equal(model[2].weight, w) and model[2].bias is not None
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 10)


def test_layer_input_validation():
    with pytest.raises(ValueError, match="expects input"):
        enn.ERBinaryConv2d(3, 4, 3)(torch.randn(2, 5, 8, 8))
    with pytest.raises(ValueError, match="expects input"):
        enn.ERBinaryLinear(3, 4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="NaN"):
        enn.ERBinaryConv2d(3, 4, 3)(torch.full((1, 3, 5, 5), float("nan")))


def test_to_dtype_keeps_float64_state():
    """Casting a model to bfloat16 casts its weights, not the ER state (p, widths, rings stay float64 with
    their bits), and the cast layer still trains."""
    layer = enn.ERBinaryConv2d(4, 3, 3, padding=1)
    layer.act_sign.set_percentile(0.8)
    layer.bfloat16()
    assert layer.weight.dtype == torch.bfloat16
    for name, buf in layer.named_buffers():
        assert buf.dtype in (torch.float64, torch.int64), name
    assert float(layer.act_sign.p) == 0.8
    out = layer(torch.randn(2, 4, 5, 5, dtype=torch.bfloat16, requires_grad=True))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and int(layer.act_sign.q.count) == 1
    layer.double()
    assert layer.weight.dtype == torch.float64 and layer.act_sign.p.dtype == torch.float64


def test_meta_construction_then_to_empty():
    """A layer built on the meta device materialises with Module.to_empty: the ER buffers land on the
    target device as float64 (uninitialised, as to_empty promises), the weight in its own dtype."""
    with torch.device("meta"):
        layer = enn.ERBinaryConv2d(4, 3, 3)
    layer = layer.to_empty(device="cpu")
    assert layer.weight.device.type == "cpu"
    for name, buf in layer.named_buffers():
        assert buf.device.type == "cpu" and buf.dtype in (torch.float64, torch.int64), name
