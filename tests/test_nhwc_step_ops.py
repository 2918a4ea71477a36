"""The NHWC ops of the ER layer's training step (functional.ERConv2dStep, _nhwc.py):
restore_activation_train_nhwc equals restore_activation_train on the same x bit for bit (y transposed
to NHWC rows, statistics, q ring, width, statistics rings) and its y_bits equal pack_signs(y - mean);
_restore_activation_backward_nhwc equals the backward of the transposed gradient up to the rounding of
its reordered sums (float64: against the reference)."""
import pytest
import torch

from erbnn_ext import reference as R

OPS = torch.ops.erbnn
pytestmark = pytest.mark.skipif(not hasattr(OPS, "restore_activation_train_nhwc"), reason="native extension not built")

SHAPES = [(4, 16, 64), (1, 32, 300), (2, 80, 45), (1, 16, 1500), (3, 20, 37), (2, 70, 50), (2, 130, 9), (5, 1, 16)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _state():
    f64, i64 = torch.float64, torch.int64
    return [torch.zeros(3, dtype=f64), torch.zeros((), dtype=i64), torch.tensor(0.25, dtype=f64),
            torch.zeros(4, dtype=f64), torch.zeros((), dtype=i64), torch.zeros(4, dtype=f64), torch.zeros((), dtype=i64)]


def _bits(rows, mean):
    return R.pack_signs(torch.where(rows.to(mean.dtype) >= mean, 1.0, -1.0), dim=2)


def _train_both(x, p=0.8, steps=2):
    pt = torch.tensor(p, dtype=torch.float64)
    sa, sb = _state(), _state()
    for _ in range(steps):
        got = OPS.restore_activation_train_nhwc(x, pt, *sa, 0.1)
        ref = OPS.restore_activation_train(x, pt, *sb, 0.1)
        yield got, ref, sa, sb


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_train_nhwc_equals_train(isa, shape, dtype):
    x = (torch.randn(shape) * 1.7 - 0.3).to(dtype)
    for got, ref, sa, sb in _train_both(x):
        y, *stats, bits = got
        assert y.shape == (shape[0], shape[2], shape[1]) and y.is_contiguous()
        assert torch.equal(y, ref[0].transpose(1, 2))
        for a, b in zip(stats, ref[1:]):
            assert a.dtype == b.dtype and torch.equal(a, b)
        for a, b in zip(sa, sb):
            assert torch.equal(a, b)
        assert bits.dtype == torch.int64 and torch.equal(bits, _bits(y, ref[1]))


@pytest.mark.parametrize("shape", [(4, 16, 16384), (1, 80, 13113), (2, 48, 11000)])
def test_train_nhwc_streamed_y_equals_train(isa, shape):
    """y of 4 MiB or more (float32, C % 16 == 0): the write pass streams y and packs the signs from the
    transposed registers (one word, two words with a pixel tail, three 16-channel pieces per word)."""
    x = torch.randn(shape) * 0.9 + 0.2
    for got, ref, sa, sb in _train_both(x, steps=1):
        assert torch.equal(got[0], ref[0].transpose(1, 2))
        assert all(torch.equal(a, b) for a, b in zip(got[1:5], ref[1:]))
        assert torch.equal(got[-1], _bits(got[0], ref[1]))


@pytest.mark.parametrize("p", [0.1, 0.8])
def test_train_nhwc_sampled_band(isa, p, monkeypatch):
    """Above the sampled band's threshold (forced to 0 here) the q path is the band select's."""
    monkeypatch.setenv("ERBNN_TRAIN_BAND_SELECT_MIN", "0")
    x = torch.randn(8, 32, 1024) * 0.5 + 0.1
    for got, ref, sa, sb in _train_both(x, p):
        assert torch.equal(got[0], ref[0].transpose(1, 2))
        assert all(torch.equal(a, b) for a, b in zip(got[1:5], ref[1:]))
        assert all(torch.equal(a, b) for a, b in zip(sa, sb))


def test_train_nhwc_ties_and_constant():
    """Ties at the mean and a constant input (sigma 0: every y = mean, every bit 1)."""
    for x in (torch.tensor([-1.0, 0.0, 1.0]).repeat(2, 17, 11)[..., :31], torch.full((2, 17, 9), 0.75)):
        for got, ref, sa, sb in _train_both(x.contiguous()):
            assert torch.equal(got[0], ref[0].transpose(1, 2))
            assert torch.equal(got[-1], _bits(got[0], ref[1]))
    const_bits = next(_train_both(torch.full((2, 17, 9), 0.75)))[0][-1]
    assert torch.equal(const_bits, torch.full_like(const_bits, (1 << 17) - 1))


def _backward_args(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 1.3 + 0.2).to(dtype)
    _, mean, sigma, rms = OPS.restore_activation(x)
    rows = torch.randn(shape[0], shape[2], shape[1], generator=g).to(dtype)
    b = torch.tensor(0.6, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return rows, x, mean, sigma, rms, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_nhwc_equals_backward(isa, shape, dtype):
    rows, x, mean, sigma, rms, b = _backward_args(shape, dtype)
    got = OPS._restore_activation_backward_nhwc(rows, x, mean, sigma, rms, b)
    ref = OPS._restore_activation_backward(rows.transpose(1, 2).contiguous(), x, mean, sigma, rms, b)
    assert got.shape == x.shape and got.dtype == x.dtype and got.is_contiguous()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 0.0)  # half types: transposed, then the same op
    assert (got.double() - ref.double()).abs().max().item() <= tol * ref.double().abs().max().item()


@pytest.mark.parametrize("shape", SHAPES + [(2, 64, 256 * 3 + 5)])
def test_backward_nhwc_reads_a_bf16_gradient_as_its_float32_widening(isa, shape):
    """A bfloat16-autocast step's grad_y (bfloat16 NHWC rows) of a float32 x: widened while it is read,
    the result is that of its float32 copy, bit for bit."""
    rows, x, mean, sigma, rms, b = _backward_args(shape, torch.float32)
    g16 = rows.bfloat16()
    got = OPS._restore_activation_backward_nhwc(g16, x, mean, sigma, rms, b)
    assert got.dtype == torch.float32
    assert torch.equal(got, OPS._restore_activation_backward_nhwc(g16.float(), x, mean, sigma, rms, b))
    # strided rows (a channels_last tensor's view) are read the same way
    wide = torch.zeros(shape[0], shape[2], shape[1] + 3, dtype=torch.bfloat16)
    wide[..., :shape[1]] = g16
    assert torch.equal(OPS._restore_activation_backward_nhwc(wide[..., :shape[1]], x, mean, sigma, rms, b), got)


def test_backward_nhwc_float64_matches_reference():
    rows, x, mean, sigma, rms, b = _backward_args((3, 20, 37), torch.float64, seed=4)
    got = OPS._restore_activation_backward_nhwc(rows, x, mean, sigma, rms, b)
    ref = R.restore_activation_backward_nhwc(rows, x, mean, sigma, rms, b)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


def test_empty_and_bad_input():
    pt = torch.tensor(0.8, dtype=torch.float64)
    for shape in ((0, 4, 5), (2, 3, 0)):
        st = _state()
        y, mean, sigma, rms, b, bits = OPS.restore_activation_train_nhwc(torch.empty(shape), pt, *st, 0.1)
        assert y.shape == (shape[0], shape[2], shape[1]) and bits.shape == (shape[0], shape[2], 1)
        assert all(torch.equal(a, c) for a, c in zip(st, _state()))  # no state change
        assert OPS._restore_activation_backward_nhwc(torch.empty(y.shape), torch.empty(shape), mean, sigma, rms,
                                                     b).shape == shape
    with pytest.raises(ValueError, match="N, C, H\\*W"):
        OPS.restore_activation_train_nhwc(torch.randn(2, 3, 4, 5), pt, *_state(), 0.1)
    rows, x, mean, sigma, rms, b = _backward_args((2, 5, 7), torch.float32)
    with pytest.raises(ValueError, match="grad_y must be"):
        OPS._restore_activation_backward_nhwc(rows.transpose(1, 2), x, mean, sigma, rms, b)
    with pytest.raises(ValueError, match="NaN"):
        OPS.restore_activation_train_nhwc(torch.tensor([[[1.0, float("nan")]]]), pt, *_state(), 0.1)


@pytest.mark.parametrize("native", [True, False])
def test_ops_dispatch_and_reference_twins(native):
    """ops.restore_activation_train_nhwc / restore_activation_backward_nhwc on either backend give the
    native op's values up to the rounding of the statistics' sums (the reference twins are PyTorch's)."""
    from erbnn_ext import ops
    x = torch.randn(3, 20, 37)
    pt = torch.tensor(0.7, dtype=torch.float64)
    got = ops.restore_activation_train_nhwc(x, pt, *_state(), 0.1, native=native)
    ref = OPS.restore_activation_train_nhwc(x, pt, *_state(), 0.1)
    assert torch.equal(got[-1], ref[-1])  # the signs
    for a, b in zip(got[:-1], ref[:-1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    rows, x, mean, sigma, rms, b = _backward_args((3, 20, 37), torch.float32)
    a = ops.restore_activation_backward_nhwc(rows, x, mean, sigma, rms, b, native=native)
    c = OPS._restore_activation_backward_nhwc(rows, x, mean, sigma, rms, b)
    assert (a - c).abs().max().item() <= 1e-5 * c.abs().max().item()
