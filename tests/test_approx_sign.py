import pytest
import torch

from erbnn_ext import functional as EF, ops, reference as R

from conftest import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_sign_exact(native, device, dtype):
    x = torch.randn(1000, dtype=dtype, device=device)
    x[:4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30])
    y = EF.approx_sign(x)
    assert y.dtype == dtype
    assert torch.equal(y, R.sign(x))
    assert y[1].item() == 1.0  # sign(-0.0) = +1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b", [0.1, 0.5, 1.0, 3.0])
def test_gradient_matches_reference_autograd(native, device, b):
    x = torch.randn(257, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn_like(x)
    (gx,) = torch.autograd.grad(EF.approx_sign(x, b), x, g)
    x2 = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(R.approx_sign_autograd(x2, b), x2, g)
    torch.testing.assert_close(gx, gr, rtol=1e-12, atol=1e-12)


def test_surrogate_formula_by_hand():
    x = torch.tensor([0.0, 0.3, -2.0], dtype=torch.float64)
    b = 0.5
    expected = (1 / b) * (1 - torch.tanh(x / b) ** 2)  # h = max(b, 1) = 1
    torch.testing.assert_close(R.surrogate_grad(x, b), expected)


def test_nan_raises(native):
    with pytest.raises(ValueError, match="NaN"):
        EF.approx_sign(torch.tensor([1.0, float("nan")]))


def test_non_contiguous_and_empty(native):
    x = torch.randn(6, 8).t()
    assert torch.equal(EF.approx_sign(x), R.sign(x))
    assert EF.approx_sign(torch.empty(0, 3)).shape == (0, 3)


def test_opcheck():
    if not ops.has_kernel("approx_sign", "cpu"):
        pytest.fail("approx_sign CPU kernel missing")
    x = torch.randn(5, 7)
    torch.library.opcheck(torch.ops.erbnn.approx_sign.default, (x,))
    torch.library.opcheck(torch.ops.erbnn._approx_sign_backward.default,
                          (torch.randn(5, 7), x, torch.tensor(0.5)))


@pytest.mark.parametrize("device", DEVICES)
def test_float64_sign_below_float_range(native, isa, device):
    """float64 signs are taken in float64: a negative below float32's range (-1e-300, -1e-46) is -1,
    not the +1 of a detour through float (which rounds it to -0.0)."""
    x = torch.tensor([-1e-300, 1e-300, -5e-324, -1e-46, 1e-46, -0.0], dtype=torch.float64, device=device)
    y = EF.approx_sign(x)
    assert y.tolist() == [-1.0, 1.0, -1.0, -1.0, 1.0, 1.0]
    assert torch.equal(y, R.sign(x))
