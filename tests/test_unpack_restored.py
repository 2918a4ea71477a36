"""ops.unpack_restored (the lean ER step's rebuild of its restored y and w_b from their packed signs): the
CPU kernel equals the reference exactly, in both layouts, on every ISA, and gives the training op's y and
the restored weights back bit for bit; bad input is refused by both backends alike."""
import pytest
import torch

from erbnn_ext import _nhwc, ops, reference as R

pytestmark = pytest.mark.skipif(not ops.has_kernel("_unpack_restored", "cpu"), reason="needs the compiled CPU kernels")

F64 = torch.float64
STATS = [(torch.tensor(0.3), torch.tensor(1.7)), (torch.tensor(-2.5, dtype=F64), torch.tensor(0.1, dtype=F64)),
         (torch.tensor(1e-3), torch.tensor(0.0))]


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("c", [1, 7, 8, 9, 16, 17, 31, 33, 64, 130, 512])
def test_equals_the_reference(c, channels_first, isa):
    g = torch.Generator().manual_seed(c)
    for n, p in ((3, 1), (2, 16), (2, 17), (1, 49), (4, 9)):
        for extra in (0, 3):  # rows wider than ceil(c / 8) bytes (int64 words seen as bytes)
            bits = torch.randint(0, 256, (n, p, (c + 7) // 8 + extra), generator=g, dtype=torch.uint8)
            for mean, sigma in STATS:
                out = ops.unpack_restored(bits, c, mean, sigma, channels_first, native=True)
                ref = R.unpack_restored(bits, c, mean, sigma, channels_first)
                assert out.dtype == mean.dtype and out.is_contiguous()
                assert out.shape == ((n, c, p) if channels_first else (n, p, c))
                assert torch.equal(out, ref)


def _state():
    return [torch.zeros(100, dtype=torch.float64), torch.zeros((), dtype=torch.int64),
            torch.ones((), dtype=torch.float64), torch.zeros(10, dtype=torch.float64),
            torch.zeros((), dtype=torch.int64), torch.zeros(10, dtype=torch.float64),
            torch.zeros((), dtype=torch.int64)]


def _train_nhwc(x, state=None):
    state = _state() if state is None else state
    n, c, h, w = x.shape
    return ops.restore_activation_train_nhwc(x.reshape(n, c, h * w), torch.tensor(0.8, dtype=torch.float64), *state,
                                             0.1)


@pytest.mark.parametrize("c", [1, 3, 8, 16, 17, 32, 63, 64, 65, 130])
def test_gives_the_training_ops_y(c, isa):
    torch.manual_seed(c)
    for x in (torch.randn(3, c, 5, 4) * 3 + 1, torch.full((2, c, 3, 3), -0.5),  # sigma = 0: y = mean
              torch.randint(-2, 3, (2, c, 4, 4)).float(),  # ties with the mean
              torch.randn(2, c, 40, 40)):  # rows of more than one piece (kFwdCols pixels)
        y, mean, sigma, _, _, bits = _train_nhwc(x)
        by = _nhwc.sign_bytes(bits, c)
        # the fewest bytes of a 1-, 2-, 4-byte cast or the words: 1/32 of y's bytes where c fills them
        nb = 1 if c <= 8 else 2 if c <= 16 else 4 if c <= 32 else (c + 63) // 64 * 8
        assert by.dtype == torch.uint8 and by.shape == (*y.shape[:2], nb)
        assert torch.equal(ops.unpack_restored(by, c, mean, sigma, native=True), y)
        assert torch.equal(ops.unpack_restored(by, c, mean, sigma, True, native=True), y.transpose(1, 2))
        # the words themselves, seen as bytes (no compaction)
        assert torch.equal(ops.unpack_restored(bits.view(torch.uint8), c, mean, sigma, native=True), y)
        # the op without y: the same statistics, state and signs
        state = _state()
        n, _, h, w = x.shape
        bits_only = ops.restore_activation_train_bits(x.reshape(n, c, h * w), torch.tensor(0.8, dtype=torch.float64),
                                                      *state, 0.1)
        ref_state = _state()
        ref = _train_nhwc(x, ref_state)
        for a, b in zip(bits_only, ref[1:]):
            assert torch.equal(a, b)
        for a, b in zip(state, ref_state):
            assert torch.equal(a, b)
    y, mean, sigma, _, _, bits = _train_nhwc(torch.randn(0, c, 3, 3))  # an empty batch
    assert ops.unpack_restored(_nhwc.sign_bytes(bits, c), c, mean, sigma, native=True).shape == (0, 9, c)


@pytest.mark.parametrize("shape", [(8, 16, 3, 3), (5, 130, 1, 1), (3, 64, 7, 7), (2, 3, 2, 5)])
def test_gives_the_restored_weights(shape, isa):
    w = torch.randn(shape)
    w_b = ops.restore_weight(w)[0]
    by = _nhwc.sign_bytes(ops.pack_conv_weight(w_b), shape[1])
    one = torch.ones(())
    out = ops.unpack_restored(by.view(shape[0], shape[2] * shape[3], -1), shape[1], one - one, one, True, native=True)
    assert torch.equal(out.view(shape), w_b)


def test_strided_and_empty_inputs():
    wide = torch.randint(0, 256, (4, 6, 8), dtype=torch.uint8)
    mean, sigma = torch.tensor(0.5), torch.tensor(2.0)
    for bits, c in ((wide[:, ::2, 1:], 50), (wide.transpose(0, 1), 64), (wide[:, :0], 3), (wide[:0], 8), (wide, 0)):
        for cf in (False, True):
            assert torch.equal(ops.unpack_restored(bits, c, mean, sigma, cf, native=True),
                               R.unpack_restored(bits, c, mean, sigma, cf))


def test_bad_input_is_refused():
    bits, mean, sigma = torch.zeros(2, 3, 2, dtype=torch.uint8), torch.tensor(0.0), torch.tensor(1.0)
    cases = [((bits.long(), 8, mean, sigma, False), TypeError, "uint8"),
             ((bits[0], 8, mean, sigma, False), ValueError, "3-D"),
             ((bits, 17, mean, sigma, False), ValueError, "channels"),
             ((bits, -1, mean, sigma, False), ValueError, "channels"),
             ((bits, 8, mean.half(), sigma.half(), False), TypeError, "float32 or float64"),
             ((bits, 8, mean, sigma.double(), False), TypeError, "dtype"),
             ((bits, 8, torch.zeros(2), sigma, False), ValueError, "one value")]
    for native in (True, False):
        for args, exc, match in cases:
            with pytest.raises(exc, match=match):
                ops.unpack_restored(*args, native=native)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("c", [1, 9, 31, 32, 33, 64, 100])
def test_out_dtype_is_the_restored_tensor_rounded_once(c, channels_first, dtype, isa):
    """dtype (a bfloat16-autocast step's y and w_b): y.to(dtype) of the float32 result, bit for bit, and
    the reference's."""
    g = torch.Generator().manual_seed(c)
    for n, p in ((2, 17), (1, 49), (3, 1)):
        bits = torch.randint(0, 256, (n, p, (c + 7) // 8 + 1), generator=g, dtype=torch.uint8)
        for mean, sigma in STATS:
            out = ops.unpack_restored(bits, c, mean, sigma, channels_first, dtype, native=True)
            assert out.dtype == dtype and out.is_contiguous()
            assert torch.equal(out, ops.unpack_restored(bits, c, mean, sigma, channels_first, native=True).to(dtype))
            assert torch.equal(out, R.unpack_restored(bits, c, mean, sigma, channels_first, dtype))


def test_out_dtype_must_be_floating():
    bits = torch.zeros(1, 2, 1, dtype=torch.uint8)
    for native in (True, False):
        with pytest.raises(TypeError, match="dtype must be a floating-point dtype"):
            ops.unpack_restored(bits, 3, torch.tensor(0.0), torch.tensor(1.0), False, torch.int32, native=native)
