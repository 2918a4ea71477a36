"""An ER layer's training step under CPU bfloat16 autocast (nn.routing.AMP_STEPS, ERConv2dStep's amp): the
fused float32 step with the exact popcount forward, its output in bfloat16 and its conv backward in
bfloat16, as autocast runs a float conv's."""
import copy

import pytest
import torch

import erbnn_ext
from erbnn_ext import functional as EF, nn as enn, ops
from erbnn_ext.nn import routing

pytestmark = pytest.mark.skipif(not ops.has_kernel("restore_activation_train", "cpu"),
                                reason="needs the compiled CPU kernels")


def _layer(cin=16, **kw):
    torch.manual_seed(0)
    return enn.ERBinaryConv2d(cin, 8, 3, padding=1, **kw).train()


def _x(cin=16, dtype=torch.float32, channels_last=False):
    x = torch.randn(4, cin, 7, 7, generator=torch.Generator().manual_seed(1)).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _bf16_conv_backward(real):
    """EF._conv_backward on grad, y and w_b cast to bfloat16, results back to float32: what the amp step's
    backward is meant to do, spelled out around the float32 step."""
    def conv_backward(grad, y, w_b, conv, *need):
        out = real(grad.bfloat16(), y.bfloat16(), w_b.bfloat16(), conv, *need)
        return tuple(None if t is None else t.float() for t in out)
    return conv_backward


def test_routes_under_bf16_autocast():
    with _bf16():
        assert routing.route(_layer(), _x()) in routing.AMP_STEPS
        assert routing.route(_layer(), _x(dtype=torch.bfloat16)) in routing.AMP_STEPS
        assert routing.route(_layer(), _x()).layout == "nhwc"
        assert routing.route(_layer(256), _x(256)).layout == "nchw"
        assert routing.route(_layer(fused_train=False), _x()).kernel == "float"
        assert routing.route(_layer(xnor_train=False), _x()).kernel == "float"
        with erbnn_ext.use_backend("reference"):
            assert routing.route(_layer(), _x()).kernel == "float"
    with torch.autocast("cpu", dtype=torch.float16):
        assert routing.route(_layer(), _x()).kernel == "float"
    assert routing.route(_layer(), _x()) not in routing.AMP_STEPS  # no autocast: the float32 step


@pytest.mark.parametrize("cin, channels_last", [(16, False), (16, True), (256, False)])
def test_amp_step_is_the_float32_step_with_a_bf16_conv_backward(cin, channels_last, monkeypatch):
    """Forward: the float32 step's output rounded to bfloat16, the same state updates. Backward: exactly
    the float32 step with its conv backward run in bfloat16."""
    amp_layer, ref_layer = _layer(cin), _layer(cin)
    x = _x(cin, channels_last=channels_last)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    with _bf16():
        out = amp_layer(xa)
    assert out.dtype == torch.bfloat16 and out.grad_fn.name() == "ERConv2dStepBackward"
    ref = ref_layer(xr)
    assert torch.equal(out, ref.to(torch.bfloat16))
    for (name, a), (_, b) in zip(amp_layer.named_buffers(), ref_layer.named_buffers()):
        assert torch.equal(a, b), name
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).bfloat16()
    out.backward(g)
    monkeypatch.setattr(EF, "_conv_backward", _bf16_conv_backward(EF._conv_backward))
    ref.backward(g.float())
    assert xa.grad.dtype == torch.float32 and amp_layer.weight.grad.dtype == torch.float32
    assert torch.equal(xa.grad, xr.grad)
    assert torch.equal(amp_layer.weight.grad, ref_layer.weight.grad)


def test_amp_step_takes_a_bf16_input_and_returns_its_gradient_in_bf16():
    layer, ref = _layer(), _layer()
    x = _x(dtype=torch.bfloat16).requires_grad_()
    with _bf16():
        out = layer(x)
        want = ref.train()(x.detach().float())
    assert out.dtype == torch.bfloat16 and torch.equal(out, want.to(torch.bfloat16))
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()
    assert layer.weight.grad.dtype == torch.float32 and layer.weight.grad.abs().sum() > 0


def test_amp_step_close_to_autocasts_float_route():
    """The amp step and the float route under the same autocast (both convs in bfloat16): the forward
    differs by bfloat16 rounding of the float conv only, the gradients by bfloat16 rounding."""
    fast, slow = _layer(), _layer(xnor_train=False)
    x = _x()
    xf, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    with _bf16():
        a, b = fast(xf), slow(xs)
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.float().abs().max().item())
    g = torch.randn(a.shape).bfloat16()
    a.backward(g)
    b.backward(g)
    for ga, gb in ((xf.grad, xs.grad), (fast.weight.grad, slow.weight.grad)):
        assert ((ga - gb).norm() / gb.norm()).item() < 2e-2


def test_amp_step_in_a_model_keeps_the_dtypes_autocast_gives():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), enn.RPReLU(16),
                                enn.ERBinaryConv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    twin = copy.deepcopy(model)
    x = torch.randn(8, 3, 8, 8)
    with _bf16():
        out = model(x)
        routes = enn.routes(twin, x)
    assert routes and all(r in routing.AMP_STEPS for _, r in routes)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
