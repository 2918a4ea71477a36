import pytest
import torch

from erbnn_ext import functional as EF, ops, reference as R

from conftest import DEVICES

SIZES = [1, 3, 31, 32, 33, 63, 64, 65, 127, 129, 256]


def _layouts(x):
    """x itself, channels-last (4-D), a transposed view and a strided slice of a wider tensor."""
    out = [("contiguous", x)]
    if x.dim() == 4:
        out.append(("channels_last", x.contiguous(memory_format=torch.channels_last)))
    out.append(("transposed", x.transpose(0, -1).contiguous().transpose(0, -1)))
    wide = torch.randn(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    out.append(("strided", wide[..., ::2]))
    return out


@pytest.mark.parametrize("n", SIZES)
def test_pack_matches_reference_layout(native, isa, n):
    x = torch.randn(2, n, 3, 5)
    x.view(-1)[:2] = torch.tensor([0.0, -0.0])  # sign(+-0) = +1 -> bit 1
    expected = R.pack_signs(x, 1)
    for name, xv in _layouts(x):
        for dim in (1, -3):
            packed, m = EF.pack_signs(xv, dim)
            assert m == n
            assert packed.dtype == torch.int64 and packed.shape == (2, 3, 5, (n + 63) // 64), name
            assert torch.equal(packed, expected), name
            assert torch.equal(EF.unpack_signs(packed, n, dim), R.sign(x)), name


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_round_trip_any_dim(native, isa, dim):
    x = torch.randn(65, 33, 7)
    packed, n = EF.pack_signs(x, dim)
    assert torch.equal(packed, R.pack_signs(x, dim))
    assert torch.equal(EF.unpack_signs(packed, n, dim), R.sign(x))


def test_bit_layout_by_hand(native, isa):
    # bit j of word k holds element 64k + j; +1 -> 1; tail bits 0
    x = -torch.ones(1, 67)
    x[0, [0, 2, 63, 64, 66]] = 1.0
    packed, _ = EF.pack_signs(x, 1)
    assert packed.tolist() == [[(1 | 4) - 2**63, 1 | 4]]  # bit 63 set: a negative int64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(native, isa, dtype):
    x = torch.randn(3, 70, 4).to(dtype)
    packed, n = EF.pack_signs(x, 1)
    assert torch.equal(packed, R.pack_signs(x, 1))
    tiny = torch.tensor([-1e-300, 1e-300, -0.0], dtype=torch.float64)  # signs survive no cast to float32
    assert torch.equal(EF.pack_signs(tiny, 0)[0], torch.tensor([2 + 4]))


def test_empty_and_rank(native):
    packed, n = EF.pack_signs(torch.empty(0, 5), 1)
    assert packed.shape == (0, 1) and n == 5
    packed, n = EF.pack_signs(torch.randn(4, 0), 1)
    assert packed.shape == (4, 0)
    assert EF.unpack_signs(packed, 0, 1).shape == (4, 0)
    x = torch.randn(2, 3, 4, 5, 70)  # rank > 4
    assert torch.equal(EF.pack_signs(x, -1)[0], R.pack_signs(x, -1))


def test_errors(native, isa):
    with pytest.raises(ValueError, match="NaN"):
        EF.pack_signs(torch.tensor([[1.0, float("nan"), 2.0]]), 1)
    x = torch.randn(4, 40, 9, 9)
    x[3, 17, 8, 8] = float("nan")
    for _, xv in _layouts(x):
        with pytest.raises(ValueError, match="NaN"):
            EF.pack_signs(xv, 1)
    with pytest.raises(TypeError, match="float"):
        torch.ops.erbnn.pack_signs(torch.ones(3, dtype=torch.int32), 0)
    with pytest.raises(TypeError, match="int64"):
        torch.ops.erbnn.unpack_signs(torch.ones(3, 1, dtype=torch.int32), 5, 1)
    with pytest.raises(ValueError, match="words"):
        torch.ops.erbnn.unpack_signs(torch.ones(3, 1, dtype=torch.int64), 65, 1)


@pytest.mark.parametrize("c", [1, 63, 65, 130])
def test_pack_conv_weight_layout(native, isa, c):
    w = torch.randn(5, c, 3, 2)
    wp = ops.pack_conv_weight(w)
    assert wp.shape == (5, 3, 2, (c + 63) // 64)
    assert torch.equal(wp, R.pack_conv_weight(w))
    assert torch.equal(R.unpack_signs(wp, c, 1), R.sign(w))
    with pytest.raises(ValueError, match="NaN"):
        ops.pack_conv_weight(torch.full((2, 3, 1, 1), float("nan")))
    with pytest.raises(ValueError, match="4-D"):
        ops.pack_conv_weight(torch.randn(2, 3))


@pytest.mark.cuda_agreement  # CPU vs CUDA on the same inputs (tools/gpu_check.sh)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 31, 33, 65, 129])
def test_round_trip_devices(native, device, n):
    x = torch.randn(3, n, 5, device=device)
    packed, m = EF.pack_signs(x, 1)
    assert torch.equal(packed.cpu(), R.pack_signs(x, 1).cpu())
    assert torch.equal(EF.unpack_signs(packed, m, 1), R.sign(x))
    w = torch.randn(4, n, 3, 3, device=device)
    assert torch.equal(ops.pack_conv_weight(w), R.pack_conv_weight(w))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for name in ("pack_signs", "unpack_signs", "pack_conv_weight"):
        assert ops.has_kernel(name, device), name
    x = torch.randn(3, 70, 5, device=device)
    torch.library.opcheck(torch.ops.erbnn.pack_signs.default, (x, 1))
    torch.library.opcheck(torch.ops.erbnn.unpack_signs.default, (R.pack_signs(x, 1), 70, 1))
    torch.library.opcheck(torch.ops.erbnn.pack_conv_weight.default, (torch.randn(4, 70, 3, 3, device=device),))
