"""ops.batch_transpose (the NCHW <-> NHWC move of the ER layer's training step): the CPU kernel equals
x.transpose(1, 2).contiguous() exactly, for every dtype, the 16x16 tiles and their tails, any strides."""
import pytest
import torch

from erbnn_ext import _nhwc, ops, reference as R

pytestmark = pytest.mark.skipif(not ops.has_kernel("_batch_transpose", "cpu"), reason="needs the compiled CPU kernels")

SHAPES = [(3, 32, 48), (2, 17, 33), (1, 16, 16), (5, 1, 40), (2, 40, 1), (4, 100, 3), (1, 257, 130)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
          torch.bool]


def _sample(shape, dtype, gen):
    x = torch.randn(shape, generator=gen) * 50
    return x > 0 if dtype == torch.bool else x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_transpose_contiguous(shape, dtype):
    x = _sample(shape, dtype, torch.Generator().manual_seed(sum(shape)))
    out = ops.batch_transpose(x, native=True)
    assert out.is_contiguous() and out.shape == (shape[0], shape[2], shape[1])
    assert torch.equal(out, R.batch_transpose(x))


def test_every_cpu_path(isa):
    """The AVX-512 tile path and the blocked element loop (the other ISAs) give the same bits."""
    for x in (torch.randn(3, 50, 37), torch.randn(2, 16, 33).double(), torch.randn(3, 50, 37).bfloat16(),
              torch.randn(2, 33, 48).half()):
        assert torch.equal(ops.batch_transpose(x, native=True), x.transpose(1, 2).contiguous())


def test_strided_and_empty_inputs():
    wide = torch.randn(4, 40, 50)
    for x in (wide[:, ::2, 1:], wide.transpose(1, 2), wide[1:3], torch.empty(0, 3, 4), torch.empty(2, 0, 5)):
        assert torch.equal(ops.batch_transpose(x, native=True), x.transpose(1, 2).contiguous())


def test_bad_input_is_refused():
    for native in (True, False):
        with pytest.raises(ValueError, match="3-D"):
            ops.batch_transpose(torch.randn(2, 3), native=native)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_nhwc_round_trip(layout):
    """_nhwc.rows / as_nchw / channels_last: NHWC rows of an [N, C, H, W] tensor and back."""
    x = torch.randn(3, 20, 5, 7)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(3, 20, 5, 14)[..., ::2]
    r = _nhwc.rows(x)
    assert r.is_contiguous() and torch.equal(r, x.permute(0, 2, 3, 1).reshape(3, 35, 20))
    assert torch.equal(_nhwc.as_nchw(r, x.shape), x)
    cl = _nhwc.channels_last(x)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x)
