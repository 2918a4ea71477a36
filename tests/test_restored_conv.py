"""The ER layer's training-step conv (functional.restored_conv2d): the forward on the packed XNOR-popcount
kernel equals F.conv2d of the restored values up to float rounding, and the gradients equal F.conv2d's
exactly (the same aten.convolution_backward on the same tensors)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from erbnn_ext import functional as EF, nn as enn, ops
from erbnn_ext._backend import use_backend

pytestmark = pytest.mark.skipif(not ops.has_kernel("binary_conv2d_packed", "cpu"),
                                reason="needs the compiled CPU kernels")


def _pair(seed=0, nhwc=False, **kw):
    """An ER layer and its twin running F.conv2d (xnor_train False). nhwc: the layer's step in NHWC order
    (nhwc_train; False keeps the NCHW step, whose gradients equal the twin's bit for bit)."""
    torch.manual_seed(seed)
    layer = enn.ERBinaryConv2d(**kw).train()
    twin = copy.deepcopy(layer)
    twin.xnor_train = False
    layer.nhwc_train = nhwc
    return layer, twin


def _step(layer, x, g):
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    out.backward(g)
    return out, x.grad


def _assert_same_grads_and_state(a, b):
    """a and b: the same weight (and bias) gradients and buffers, bit for bit; then their grads cleared."""
    assert torch.equal(a.weight.grad, b.weight.grad)
    if a.bias is not None:
        assert torch.equal(a.bias.grad, b.bias.grad)
    for (name, u), (_, v) in zip(a.named_buffers(), b.named_buffers()):
        assert torch.equal(u, v), name
    a.weight.grad = b.weight.grad = None


def _close(a, b):
    """Equal up to float32 rounding of sums of up to C*k*k terms of magnitude max|y|."""
    return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def _assert_close_grads_and_state(a, b):
    """The NHWC step against the NCHW form: gradients equal up to float32 rounding of the conv backward's
    and the restoration backward's sums (taken in another order), buffers (float64 sums) up to 1e-12;
    then the grads are cleared."""
    for u, v in [(a.weight.grad, b.weight.grad)] + ([(a.bias.grad, b.bias.grad)] if a.bias is not None else []):
        assert (u - v).abs().max().item() <= 1e-5 * v.abs().max().item()
    for (name, u), (_, v) in zip(a.named_buffers(), b.named_buffers()):
        if u.is_floating_point():
            assert torch.allclose(u, v, rtol=1e-12, atol=0), name
        else:
            assert torch.equal(u, v), name
    a.weight.grad = b.weight.grad = None


CONFIGS = [
    dict(in_channels=20, out_channels=24, kernel_size=3, stride=1, padding=1),
    dict(in_channels=16, out_channels=32, kernel_size=3, stride=2, padding=1),
    dict(in_channels=70, out_channels=5, kernel_size=3, stride=1, padding=2, dilation=2),
    dict(in_channels=8, out_channels=6, kernel_size=(1, 3), stride=(2, 1), padding=(0, 1), bias=True),
    dict(in_channels=130, out_channels=7, kernel_size=1),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_xnor_step_matches_float_conv_step(cfg, layout):
    layer, twin = _pair(**cfg)
    x = torch.randn(3, cfg["in_channels"], 9, 11) * 1.5 + 0.4
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(3, cfg["in_channels"], 9, 22)[..., ::2]
    with torch.no_grad():  # no state change
        g = torch.randn_like(twin(x))
    for _ in range(2):  # the second step uses the first step's ring state
        out, gx = _step(layer, x, g)
        ref, gx_ref = _step(twin, x, g)
        assert out.grad_fn.name() == "ERConv2dStepBackward"
        assert ref.grad_fn.name() == "ConvolutionBackward0"
        assert out.dtype == ref.dtype and out.shape == ref.shape and out.stride() == ref.stride()
        assert _close(out, ref)
        assert torch.equal(gx, gx_ref)
        _assert_same_grads_and_state(layer, twin)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_nhwc_step_matches_float_conv_step(cfg, layout):
    """The step in NHWC order (_nhwc.py) against F.conv2d of the restored values in NCHW: output up to
    rounding in F.conv2d's layout, gradients up to float32 rounding, dx in x's layout, the same state."""
    layer, twin = _pair(nhwc=True, **cfg)
    x = torch.randn(3, cfg["in_channels"], 9, 11) * 1.5 + 0.4
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(3, cfg["in_channels"], 9, 22)[..., ::2]
    with torch.no_grad():
        g = torch.randn_like(twin(x))
    for _ in range(2):
        out, gx = _step(layer, x, g)
        ref, gx_ref = _step(twin, x, g)
        assert out.grad_fn.name() == "ERConv2dStepBackward"
        assert out.dtype == ref.dtype and out.shape == ref.shape and out.stride() == ref.stride()
        assert _close(out, ref)
        assert (gx - gx_ref).abs().max().item() <= 1e-5 * gx_ref.abs().max().item()
        assert gx.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                                else torch.contiguous_format)
        _assert_close_grads_and_state(layer, twin)


def test_nhwc_step_choice():
    """nhwc_train None: NHWC for channels_last input or in_channels <= 128 (the measured rule)."""
    small, big = enn.ERBinaryConv2d(128, 8, 3), enn.ERBinaryConv2d(256, 8, 3)
    x, xb = torch.randn(2, 128, 5, 5), torch.randn(2, 256, 5, 5)

    def nhwc_step(layer, x):
        return enn.route(layer, x).layout == "nhwc"
    assert nhwc_step(small, x) and nhwc_step(small, x.contiguous(memory_format=torch.channels_last))
    assert not nhwc_step(big, xb) and nhwc_step(big, xb.contiguous(memory_format=torch.channels_last))
    big.nhwc_train, small.nhwc_train = True, False
    assert nhwc_step(big, xb) and not nhwc_step(small, x.contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("cfg", CONFIGS[:2] + CONFIGS[3:4])
@pytest.mark.parametrize("nhwc", [False, True])
def test_fused_step_equals_composed_functions(cfg, nhwc):
    """ERConv2dStep (one autograd node, eager) against the composition that torch.compile traces
    (RestoreWeight + RestoreActivation + RestoredConv2d): the same ops, so the same bits everywhere in NCHW
    order; in NHWC order the same forward, gradients and state up to the rounding of reordered sums."""
    layer, composed = _pair(nhwc=nhwc, **cfg)
    composed.xnor_train = True
    composed.fused_train = False
    x = torch.randn(4, cfg["in_channels"], 8, 8) * 0.9 - 0.3
    for _ in range(3):
        xa = x.detach().clone().requires_grad_()
        xb = x.detach().clone().requires_grad_()
        oa, ob = layer(xa), composed(xb)
        assert oa.grad_fn.name() == "ERConv2dStepBackward" and ob.grad_fn.name() == "RestoredConv2dBackward"
        assert torch.equal(oa, ob)
        g = torch.randn_like(oa)
        oa.backward(g)
        ob.backward(g)
        if nhwc:
            assert (xa.grad - xb.grad).abs().max().item() <= 1e-5 * xb.grad.abs().max().item()
            _assert_close_grads_and_state(layer, composed)
        else:
            assert torch.equal(xa.grad, xb.grad)
            _assert_same_grads_and_state(layer, composed)


def _equal_or_close(a, b, nhwc):
    """Bit for bit in NCHW order; in NHWC order up to float32 rounding of the reordered backward sums."""
    return (a - b).abs().max().item() <= 1e-5 * b.abs().max().item() if nhwc else torch.equal(a, b)


@pytest.mark.parametrize("nhwc", [False, True])
def test_fused_step_without_input_grad(nhwc):
    """x without requires_grad (a first layer fed data): only the weight's gradient."""
    layer, twin = _pair(nhwc=nhwc, in_channels=6, out_channels=4, kernel_size=3, padding=1)
    x = torch.randn(2, 6, 5, 5)
    out = layer(x)
    assert out.grad_fn.name() == "ERConv2dStepBackward"
    out.sum().backward()
    twin(x).sum().backward()
    assert _equal_or_close(layer.weight.grad, twin.weight.grad, nhwc)


@pytest.mark.parametrize("nhwc", [False, True])
def test_constant_input_sigma_zero(nhwc):
    """A constant batch: sigma = 0, y = mu everywhere (sign(0) = +1: every packed bit set); the popcount
    form still gives mu * conv(1, W_b) with its zero-padding borders."""
    layer, twin = _pair(nhwc=nhwc, in_channels=4, out_channels=3, kernel_size=3, padding=1)
    x = torch.full((2, 4, 5, 5), 0.75)
    g = torch.randn(2, 3, 5, 5)
    out, gx = _step(layer, x, g)
    ref, gx_ref = _step(twin, x, g)
    assert _close(out, ref)
    assert _equal_or_close(gx, gx_ref, nhwc)


def test_functional_matches_conv2d_and_its_gradients():
    torch.manual_seed(3)
    x = torch.randn(2, 12, 7, 7)
    y, mu, sigma = EF.restore_activation(x)
    w = torch.randn(5, 12, 3, 3)
    w_b = torch.where(w >= 0, 1.0, -1.0).requires_grad_()
    bias = torch.randn(5, requires_grad=True)
    y1 = y.detach().requires_grad_()
    y2 = y.detach().requires_grad_()
    out = EF.restored_conv2d(y1, w_b, mu, sigma, bias, 2, 1, 1, xnor=True)
    ref = F.conv2d(y2, w_b, bias, 2, 1, 1)
    assert _close(out, ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (y1, w_b, bias), g)
    grads_ref = torch.autograd.grad(ref, (y2, w_b, bias), g)
    for a, b in zip(grads, grads_ref):
        assert torch.equal(a, b)


def test_when_the_popcount_forward_runs():
    y = torch.randn(1, 3, 4, 4)
    assert EF.xnor_trains(y)
    assert not EF.xnor_trains(y.double())
    assert not EF.xnor_trains(y.bfloat16())
    with use_backend("reference"):
        assert not EF.xnor_trains(y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not EF.xnor_trains(y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_keep_the_float_conv(dtype):
    layer, _ = _pair(in_channels=4, out_channels=3, kernel_size=3, padding=1)
    layer.to(dtype)
    out = layer(torch.randn(2, 4, 5, 5, dtype=dtype, requires_grad=True))
    assert out.dtype == dtype and out.grad_fn.name() != "RestoredConv2dBackward"


def test_no_grad_and_empty_batches_keep_the_float_conv():
    """The popcount training forward only runs in a measuring step (train mode, grad enabled, non-empty
    batch). No-grad training takes F.conv2d with batch statistics (bit-equal to the float-conv twin) and
    changes no state; an empty batch changes no state either."""
    layer, twin = _pair(in_channels=4, out_channels=3, kernel_size=3, padding=1)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        out = layer(x)
        assert torch.equal(out, twin(x))
    out = layer(torch.randn(0, 4, 5, 5, requires_grad=True))
    assert out.shape == (0, 3, 5, 5)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_restored_conv2d_negative_sigma_and_dtype_checks():
    """Fixed statistics may give a negative sigma (y = sigma * s + mean, sign(y - mean) = -s): the popcount
    form still equals F.conv2d. Mixed dtypes are refused up front, as F.conv2d (the backward) would."""
    torch.manual_seed(4)
    x = torch.randn(2, 6, 6, 6)
    y, mu, sigma = EF.restore_activation(x, stats=(0.1, -0.5))
    assert float(sigma) < 0
    w_b = torch.where(torch.randn(3, 6, 3, 3) >= 0, 1.0, -1.0)
    assert _close(EF.restored_conv2d(y, w_b, mu, sigma, None, 1, 1, xnor=True), F.conv2d(y, w_b, None, 1, 1))
    with pytest.raises(ValueError, match="w_b"):
        EF.restored_conv2d(y, w_b.double(), mu, sigma, None, 1, 1, xnor=True)
    with pytest.raises(ValueError, match="bias"):
        EF.restored_conv2d(y, w_b, mu, sigma, torch.zeros(3, dtype=torch.float64), 1, 1, xnor=True)
    # the default decision falls back to F.conv2d (which raises its own error) instead
    with pytest.raises(RuntimeError):
        EF.restored_conv2d(y, w_b.double(), mu, sigma, None, 1, 1)


def test_compiled_training_uses_the_float_conv(native):
    """Under torch.compile the layer takes F.conv2d (torch 2.11's compiler drops RestoredConv2d's
    gradient): xnor_trains says no while compiling, and a compiled step's gradients match eager's."""
    layer, _ = _pair(in_channels=3, out_channels=4, kernel_size=3, padding=1)
    compiled_src = copy.deepcopy(layer)
    seen = []

    def probe(y):
        seen.append(EF.xnor_trains(y))
        return y * 1
    torch.compile(probe, backend="eager")(torch.randn(2, 3))
    assert seen == [False]
    x = torch.randn(2, 3, 6, 6)
    g = torch.randn(2, 4, 6, 6)  # a fixed upstream gradient: the forwards differ by rounding only
    layer(x).backward(g)
    torch.compile(compiled_src, backend="aot_eager")(x).backward(g)
    assert compiled_src.weight.grad.abs().max() > 0
    torch.testing.assert_close(compiled_src.weight.grad, layer.weight.grad, rtol=1e-5, atol=1e-5)
