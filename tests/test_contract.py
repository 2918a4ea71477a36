"""The PyTorch contract at every seam (issue 11): fake kernels vs real ones on every layout, first-order
autograd only, the backend recorded per forward, float64 signs, empty batches, buffers as the only
state, dtypes, no stale caches, nn.Conv2d's signature, binarize_ selection and foreign checkpoints."""
import threading

import pytest
import torch
import torch.nn.functional as F

import erbnn_ext
from erbnn_ext import functional as EF, nn as enn, ops, reference as R

from conftest import DEVICES, NATIVE

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _layouts(shape, dtype, device, requires_grad=False):
    """The same values in contiguous, channels_last (4-D), transposed and sliced memory."""
    base = torch.randn(shape, dtype=torch.float64).to(dtype=dtype, device=device)
    out = {"contiguous": base}
    if len(shape) == 4:
        out["channels_last"] = base.contiguous(memory_format=torch.channels_last)
    out["transposed"] = base.transpose(0, -1).contiguous().transpose(0, -1)
    wide = torch.randn(*shape[:-1], shape[-1] * 2, dtype=torch.float64).to(dtype=dtype, device=device)
    out["sliced"] = wide[..., ::2]
    return {k: v.requires_grad_(requires_grad) for k, v in out.items()}


def _opcheck_samples(device, dtype):
    for layout, x in _layouts((3, 4, 5, 6), dtype, device).items():
        acc = R.acc_dtype(dtype)
        b = torch.tensor(0.7, dtype=acc, device=device)
        g = torch.randn(x.shape, device=device).to(dtype)
        yield layout, "restore_weight", (x,)
        wb, mean, alpha = R.restore_weight(x)
        yield layout, "_restore_weight_backward", (g, x, mean, alpha, b)
        yield layout, "restore_activation", (x,)
        y, m, s, rms = R.restore_activation(x)
        yield layout, "_restore_activation_backward", (g, x, m, s, rms, b)
        yield layout, "restore_activation_fixed", (x, m, s)
        yield layout, "_restore_activation_fixed_backward", (g, x, m, s, b)
        yield layout, "approx_sign", (x,)
        yield layout, "_approx_sign_backward", (g, x, b)
        yield layout, "two_sided_quantile", (x, 0.3)
        yield layout, "pack_signs", (x, 1)
        yield layout, "binary_conv2d", (x, torch.randn(2, 4, 3, 3, device=device).to(dtype), [1, 1], [1, 1], [1, 1])
        yield layout, "pack_conv_weight", (x,)
        yield layout, "_batch_transpose", (x[1],)  # 3-D, with the 4-D layout's strides
        x3 = x[..., 1]  # [3, 4, 5]: x of the NHWC step ops, with the layout's strides
        y3, m3, s3, rms3 = R.restore_activation(x3)
        yield layout, "_restore_activation_backward_nhwc", (g[..., 1].transpose(1, 2), x3, m3, s3, rms3, b)
        bits = (x3 * 64).to(torch.int32).to(torch.uint8)  # [3, 4, 5] sign bytes, with the layout's strides
        yield layout, "_unpack_restored", (bits, 37, m3, s3, False)
        yield layout, "_unpack_restored", (bits, 40, m3, s3, True)
        yield layout, "_unpack_restored", (bits, 33, m3, s3, True, torch.bfloat16)
        if dtype == torch.float32:  # an autocast step's bfloat16 grad_y of a float32 x
            yield layout, "_restore_activation_backward_nhwc", (g[..., 1].transpose(1, 2).bfloat16(), x3, m3, s3,
                                                                rms3, b)


def _train_samples(device, dtype):
    for layout, x in _layouts((3, 4, 5, 6), dtype, device).items():
        ring = lambda n: torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
        count = lambda: torch.zeros((), dtype=torch.int64, device=device)  # noqa: E731
        p = torch.tensor(0.6, dtype=torch.float64, device=device)
        width = lambda: torch.ones((), dtype=torch.float64, device=device)  # noqa: E731
        yield layout, "restore_weight_train", (x, p, ring(5), count(), width(), 0.1)
        yield layout, "restore_activation_train", (x, p, ring(5), count(), width(), ring(7), count(), ring(7),
                                                   count(), 0.1)
        yield layout, "restore_activation_train_nhwc", (x[..., 1], p, ring(5), count(), width(), ring(7), count(),
                                                        ring(7), count(), 0.1)
        yield layout, "restore_activation_train_bits", (x[..., 1], p, ring(5), count(), width(), ring(7), count(),
                                                        ring(7), count(), 0.1)


@pytest.mark.skipif(not NATIVE, reason="native extension not built")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_opcheck_every_layout(device, dtype):
    """Schema, fake kernel (exact strides and dtypes), compile vs eager, for every op and layout."""
    samples = list(_opcheck_samples(device, dtype)) + list(_train_samples(device, dtype))
    checked = 0
    for layout, name, args in samples:
        if not ops.has_kernel(name, device):
            continue
        op = getattr(torch.ops.erbnn, name).default
        real = op(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
        real = real if isinstance(real, tuple) else (real,)
        assert all(t.is_contiguous() for t in real), (name, layout)  # what the fakes promise
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor",
                                                     "test_aot_dispatch_dynamic"))
        checked += 1
    assert checked >= 40


@pytest.mark.skipif(not NATIVE, reason="native extension not built")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "sliced"])
def test_opcheck_requires_grad_through_functional(layout):
    x = _layouts((2, 3, 4, 5), torch.float32, "cpu", requires_grad=True)[layout]
    for fn in (lambda t: EF.restore_activation(t, 0.5)[0], lambda t: EF.restore_weight(t, 0.5)[0],
               lambda t: EF.approx_sign(t, 0.5)):
        eager = fn(x)
        (g,) = torch.autograd.grad(eager.sum(), x)
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)(x)
        (gc,) = torch.autograd.grad(compiled.sum(), x)
        assert torch.equal(eager, compiled) and torch.allclose(g, gc, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", [lambda x: EF.approx_sign(x, 0.5), lambda x: EF.restore_weight(x, 0.5)[0],
                                lambda x: EF.restore_activation(x, 0.5)[0]])
def test_double_backward_refused(fn):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fn(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|trying to backward"):
        g.sum().backward()


@pytest.mark.skipif(not NATIVE, reason="native extension not built")
def test_backward_uses_the_forward_backend():
    calls = []
    real = R.restore_activation_backward

    def spy(*a, **k):
        calls.append(threading.get_ident())
        return real(*a, **k)

    x = torch.randn(4, 5, requires_grad=True)
    with erbnn_ext.use_backend("native"):
        y = EF.restore_activation(x, 0.5)[0]
    R.restore_activation_backward = spy
    try:
        with erbnn_ext.use_backend("reference"):  # the backward must not switch to the reference
            y.sum().backward()
    finally:
        R.restore_activation_backward = real
    assert calls == []
    x.grad = None
    with erbnn_ext.use_backend("reference"):
        y = EF.restore_activation(x, 0.5)[0]
    R.restore_activation_backward = spy
    try:
        with erbnn_ext.use_backend("native"):
            y.sum().backward()
    finally:
        R.restore_activation_backward = real
    assert len(calls) == 1


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("device", DEVICES)
def test_float64_signs_do_not_round_through_float(backend, device):
    tiny = torch.tensor([-1e-300, 1e-300, -0.0, -5e-324], dtype=torch.float64, device=device)
    with erbnn_ext.use_backend(backend):
        assert EF.approx_sign(tiny).tolist() == [-1.0, 1.0, 1.0, -1.0]
        w = torch.tensor([[1e-300, -1e-300, 3e-300, -3e-300]], dtype=torch.float64, device=device)
        assert EF.restore_weight(w)[0].tolist() == [[1.0, -1.0, 1.0, -1.0]]


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_empty_batch_changes_no_state(backend):
    layer = enn.ERBinaryConv2d(3, 4, 3, padding=1)
    with erbnn_ext.use_backend(backend):
        layer(torch.randn(2, 3, 5, 5)).sum().backward()
        before = {k: v.clone() for k, v in layer.state_dict().items()}
        out = layer(torch.randn(0, 3, 5, 5))
        assert out.shape == (0, 4, 5, 5)
        out.sum().backward()
        for k, v in layer.state_dict().items():
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_buffers_are_the_only_state(backend):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 6, 6)
    with erbnn_ext.use_backend(backend):
        a = enn.ERBinaryConv2d(3, 4, 3)
        a.weight_sign.p.fill_(0.2)  # the docstring's own example: editing the buffer takes effect
        a.act_sign.p.fill_(0.2)
        b = enn.ERBinaryConv2d(3, 4, 3)
        b.load_state_dict(a.state_dict())
        enn.set_percentile(b, 0.2)
        for m in (a, b):
            m(x).sum().backward()
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
        assert float(a.act_sign.b) != 1.0
        # statistics loaded at the same count still change the eval result
        a.eval()
        with torch.no_grad():
            y0 = a(x)
            sd = a.state_dict()
            sd["act_mean.values"] = sd["act_mean.values"] + 0.5
            a.load_state_dict(sd)
            assert not torch.allclose(a(x), y0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_eval_keeps_input_dtype(dtype, backend):
    conv = enn.ERBinaryConv2d(3, 4, 3, padding=1, dtype=dtype)
    lin = enn.ERBinaryLinear(6, 5, dtype=dtype)
    with erbnn_ext.use_backend(backend):
        if dtype != torch.float16:  # CPU training in float16 is not what this checks
            conv(torch.randn(2, 3, 5, 5, dtype=dtype)).sum().backward()
        conv.eval(), lin.eval()
        with torch.no_grad():
            assert conv(torch.randn(2, 3, 5, 5, dtype=dtype)).dtype == dtype
            assert lin(torch.randn(2, 6, dtype=dtype)).dtype == dtype


@pytest.mark.skipif(not NATIVE, reason="native extension not built")
def test_eval_never_serves_stale_weights(native):
    torch.manual_seed(3)
    layer = enn.ERBinaryConv2d(8, 6, 3, padding=1)
    x = torch.randn(2, 8, 7, 7)
    layer(x).sum().backward()
    layer.eval()

    def truth():
        with erbnn_ext.use_backend("reference"), torch.no_grad():
            return layer(x)

    with torch.no_grad():
        layer(x)
        layer.weight.data.clamp_(-0.01, 0.01)  # .data: the version counter does not move
        layer.weight.data[0].fill_(0.3)
        torch.testing.assert_close(layer(x), truth(), rtol=1e-5, atol=1e-4)
        sd = layer.state_dict()
        sd["act_sigma.values"] = sd["act_sigma.values"] * 3  # same count, other statistics
        layer.load_state_dict(sd)
        torch.testing.assert_close(layer(x), truth(), rtol=1e-5, atol=1e-4)
        layer.weight = torch.nn.Parameter(torch.randn_like(layer.weight))  # a new Parameter, version 0
        torch.testing.assert_close(layer(x), truth(), rtol=1e-5, atol=1e-4)


def test_conv_signature_is_nn_conv2d():
    c = enn.ERBinaryConv2d(3, 8, 3, 2, 1, 1, 1, True, "zeros", "cpu", torch.float64, q_buffer=5, stat_buffer=7)
    ref = torch.nn.Conv2d(3, 8, 3, 2, 1, 1, 1, True, "zeros", "cpu", torch.float64)
    assert (c.stride, c.padding, c.dilation, c.groups, c.padding_mode) == (ref.stride, ref.padding, ref.dilation,
                                                                          ref.groups, ref.padding_mode)
    assert c.bias is not None and c.weight.dtype == torch.float64
    assert c.weight_sign.q.size == 5 and c.act_mean.size == 7
    assert enn.ERBinaryConv2d(3, 8, 3).bias is None  # a BatchNorm follows: no bias by default
    with pytest.raises(ValueError, match="groups=1"):
        enn.ERBinaryConv2d(4, 8, 3, 1, 0, 1, 2)
    with pytest.raises(ValueError, match="zero padding"):
        enn.ERBinaryConv2d(4, 8, 3, padding=1, padding_mode="reflect")
    lin = enn.ERBinaryLinear(4, 3, True, "cpu", torch.float64, q_buffer=3)
    assert lin.bias is not None and lin.weight.dtype == torch.float64


@pytest.mark.parametrize("attr,value,match", [("groups", 2, "groups=1"), ("padding_mode", "circular", "padding")])
def test_config_changed_after_construction_is_refused(attr, value, match):
    c = enn.ERBinaryConv2d(4, 4, 3, padding=1)
    setattr(c, attr, value)
    with pytest.raises(ValueError, match=match):
        c(torch.randn(1, 4, 5, 5))


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3), torch.nn.Conv2d(8, 8, 1),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 4), torch.nn.Linear(4, 2))


def _binary_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, (enn.ERBinaryConv2d, enn.ERBinaryLinear))]


def test_binarize_include_exclude():
    assert _binary_names(enn.binarize_(_net())) == ["1", "2", "4"]
    assert _binary_names(enn.binarize_(_net(), exclude=lambda n, m: getattr(m, "kernel_size", None) == (1, 1))) \
        == ["1", "4"]
    assert _binary_names(enn.binarize_(_net(), include=["1", "4"])) == ["1", "4"]
    assert _binary_names(enn.binarize_(_net(), include="*", exclude="4")) == ["1", "2"]
    assert _binary_names(enn.binarize_(_net(), skip_first=False, skip_last=False, exclude=["2"])) == ["0", "1", "4", "5"]
    with pytest.raises(TypeError, match="include"):
        enn.binarize_(_net(), include=[3])


def test_load_weights_from_another_binarizer():
    from erbnn_ext import models
    torch.manual_seed(0)
    irnet = models.resnet20_1w1a(method="irnet")
    er = models.resnet20_1w1a()
    with pytest.raises(RuntimeError, match="Missing key"):
        er.load_state_dict(irnet.state_dict())
    enn.load_weights(er, irnet.state_dict())
    for k, v in irnet.state_dict().items():
        if k in er.state_dict():
            assert torch.equal(er.state_dict()[k], v), k
    sd = irnet.state_dict()
    del sd["linear.weight"]
    with pytest.raises(KeyError, match="linear.weight"):
        enn.load_weights(er, sd)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_autocast_bf16_step_close_to_float32(backend):
    torch.manual_seed(0)
    layer = enn.ERBinaryConv2d(8, 8, 3, padding=1)
    twin = enn.ERBinaryConv2d(8, 8, 3, padding=1)
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(4, 8, 8, 8)
    with erbnn_ext.use_backend(backend):
        ref = layer(x)
        ref.square().mean().backward()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = twin(x)
            assert out.dtype == torch.bfloat16  # the convolution runs in the autocast dtype
            out.float().square().mean().backward()
    assert twin.act_mean.values.dtype == torch.float64  # statistics stay in float
    torch.testing.assert_close(twin.act_mean.values, layer.act_mean.values)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.3)
    cos = F.cosine_similarity(twin.weight.grad.flatten(), layer.weight.grad.flatten(), dim=0)
    assert cos > 0.98
