"""The reference twins and the native kernels agree at the edges: empty packed tensors, one input
channel (standard strides from unpack_signs), and +-Inf (a defined sign: accepted by both) against NaN
(no sign: a ValueError from both)."""
import pytest
import torch

from erbnn_ext import ops

INF = float("inf")
BACKENDS = [pytest.param(True, id="native"), pytest.param(False, id="reference")]


def _needs(native_flag, request):
    if native_flag:
        request.getfixturevalue("native")  # skips without the compiled kernels


@pytest.mark.parametrize("use_native", BACKENDS)
def test_unpack_signs_of_an_empty_batch(use_native, request):
    _needs(use_native, request)
    for c in (1, 5, 64, 65):
        packed = ops.pack_signs(torch.randn(0, c, 3, 4), 1, native=use_native)
        assert packed.shape == (0, 3, 4, (c + 63) // 64)
        out = ops.unpack_signs(packed, c, 1, native=use_native)
        assert out.shape == (0, c, 3, 4) and out.dtype == torch.float32 and out.is_contiguous()


@pytest.mark.parametrize("use_native", BACKENDS)
def test_bits_conv_with_packed_input_at_batch_zero(use_native, request):
    _needs(use_native, request)
    w = ops.pack_conv_weight(torch.randn(6, 5, 3, 3), native=use_native)
    xb = ops.pack_signs(torch.randn(0, 5, 7, 7), 1, native=use_native)
    out, bits = ops.binary_conv2d_bits(xb, w, 1, 1, 1, in_channels=5, next_shift=0.0, native=use_native)
    assert out.shape == (0, 6, 7, 7) and bits.shape == (0, 7, 7, 1)


def test_unpack_signs_strides_match_native(native):
    # a [O, 1, k, k] weight: the packed axis has length 1, and moving it back must not leave odd strides
    for shape in [(4, 1, 7, 7), (3, 1, 1, 5), (2, 70, 3, 3)]:
        wp = ops.pack_conv_weight(torch.randn(shape))
        ref, nat = (ops.unpack_signs(wp, shape[1], 1, native=n) for n in (False, True))
        assert ref.is_contiguous() and ref.stride() == nat.stride() and torch.equal(ref, nat)


@pytest.mark.parametrize("k,stride,padding,dilation", [(7, 1, 0, 1), (7, 3, 2, 3), (5, 2, 1, 1), (3, 1, 1, 2)])
def test_one_input_channel_packed_conv_equals_native(native, k, stride, padding, dilation):
    g = torch.Generator().manual_seed(k * 10 + stride)
    x, w = torch.randn(3, 1, 26, 19, generator=g), torch.randn(16, 1, k, k, generator=g)
    wp = ops.pack_conv_weight(w)
    shift = torch.tensor([0.1], dtype=torch.float64)
    ref, nat = (ops.binary_conv2d_packed(x, wp, stride, padding, dilation, x_shift=shift, native=n)
                for n in (False, True))
    assert torch.equal(ref, nat)  # integers: exact
    xb = ops.pack_signs(torch.where(x >= 0.1, 1.0, -1.0), 1)
    ref, nat = (ops.binary_conv2d_bits(xb, wp, stride, padding, dilation, in_channels=1, native=n)[0]
                for n in (False, True))
    assert torch.equal(ref, nat)


def _with_infs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    flat = x.view(-1)
    flat[:: 7] = INF
    flat[3:: 11] = -INF
    return x, torch.where(x >= 0, 1.0, -1.0)  # the same signs, finite


@pytest.mark.parametrize("use_native", BACKENDS)
def test_inf_is_a_sign_in_both_backends(use_native, request):
    _needs(use_native, request)
    x, xs = _with_infs((2, 3, 6, 5), 0)
    w, ws = _with_infs((4, 3, 3, 3), 1)
    kw = dict(native=use_native)
    assert torch.equal(ops.binary_conv2d(x, w, 1, 1, 1, **kw), ops.binary_conv2d(xs, ws, 1, 1, 1, **kw))
    xl, xls = _with_infs((5, 40), 2)
    wl, wls = _with_infs((3, 40), 3)
    assert torch.equal(ops.binary_linear(xl, wl, **kw), ops.binary_linear(xls, wls, **kw))
    assert torch.equal(ops.pack_signs(x, 1, **kw), ops.pack_signs(xs, 1, **kw))
    assert torch.equal(ops.pack_conv_weight(w, **kw), ops.pack_conv_weight(ws, **kw))
    wp = ops.pack_conv_weight(ws, **kw)
    assert torch.equal(ops.binary_conv2d_packed(x, wp, 1, 1, 1, x_shift=0.0, **kw),
                       ops.binary_conv2d_packed(xs, wp, 1, 1, 1, x_shift=0.0, **kw))
    assert torch.equal(ops.binary_conv2d_bits(x, wp, 1, 1, 1, x_shift=0.0, **kw)[0],
                       ops.binary_conv2d_bits(xs, wp, 1, 1, 1, x_shift=0.0, **kw)[0])


def test_inf_results_equal_across_backends(native):
    x, _ = _with_infs((2, 3, 6, 5), 0)
    w, _ = _with_infs((4, 3, 3, 3), 1)
    assert torch.equal(ops.binary_conv2d(x, w, 1, 1, 1, native=False), ops.binary_conv2d(x, w, 1, 1, 1, native=True))
    xl, _ = _with_infs((5, 40), 2)
    wl, _ = _with_infs((3, 40), 3)
    assert torch.equal(ops.binary_linear(xl, wl, native=False), ops.binary_linear(xl, wl, native=True))


@pytest.mark.parametrize("use_native", BACKENDS)
def test_nan_is_refused_by_both_backends(use_native, request):
    _needs(use_native, request)
    x = torch.randn(2, 3, 6, 5)
    x[1, 2, 3, 4] = float("nan")
    w = torch.randn(4, 3, 3, 3)
    w[0, 0, 0, 0] = 2.0
    kw = dict(native=use_native)
    with pytest.raises(ValueError, match="x contains NaN"):
        ops.binary_conv2d(x, w, 1, 1, 1, **kw)
    with pytest.raises(ValueError, match="w contains NaN"):
        ops.binary_conv2d(torch.randn(2, 3, 6, 5), torch.where(w > 1.0, float("nan"), w), 1, 1, 1, **kw)
    with pytest.raises(ValueError, match="x contains NaN"):
        ops.binary_linear(x.reshape(2, -1), torch.randn(3, 90), **kw)
    with pytest.raises(ValueError, match="x contains NaN"):
        ops.pack_signs(x, 1, **kw)
    with pytest.raises(ValueError, match="x contains NaN"):
        ops.binary_conv2d_packed(x, ops.pack_conv_weight(w, **kw), 1, 1, 1, **kw)
