"""Activation restoration (method.md section 2): native kernels against erbnn_ext.reference."""
import pytest
import torch

from erbnn_ext import functional as EF, ops, reference as R

from conftest import DEVICES

SHAPES = [(1, 1), (7, 33), (2, 40000), (1, 3, 5, 5), (8, 16, 8, 8), (3, 64, 16, 16)]  # 40000 > one block


def _stats64(x):
    rows = x.double().reshape(x.shape[0], -1)
    mean = rows.mean()
    rms = (rows - mean).pow(2).mean(1).sqrt()
    return mean, rms.mean(), rms


def _check_forward(x):
    y, mean, sigma, rms = ops.restore_activation(x)
    st = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert y.dtype == x.dtype and y.shape == x.shape and mean.dtype == sigma.dtype == rms.dtype == st
    assert mean.shape == sigma.shape == () and rms.shape == (x.shape[0],)
    m64, s64, r64 = _stats64(x.cpu())
    torch.testing.assert_close(sigma.cpu().double(), s64, rtol=1e-6, atol=0)
    torch.testing.assert_close(rms.cpu().double(), r64, rtol=1e-6, atol=0)
    torch.testing.assert_close(mean.cpu().double(), m64, rtol=1e-6, atol=1e-7 * float(s64))
    # exact: y is the reference's two values for the native statistics, and its signs match the
    # reference's own forward
    assert torch.equal(y, R.restore_activation_fixed(x, mean, sigma))
    ry, rmean, _, _ = R.restore_activation(x)
    assert torch.equal(y.double() >= mean.double(), ry.double() >= rmean.double())


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_shapes_isas(native, isa, shape):
    _check_forward(torch.randn(shape) * 1.5 + 0.4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_forward_dtypes(native, device, dtype):
    _check_forward((torch.randn(4, 8, 6, 6, device=device) + 0.3).to(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b", [0.2, 1.0, 3.0])
@pytest.mark.parametrize("shape", [(1, 2), (5, 3, 4, 4), (4, 20000)])
def test_gradient_matches_reference_autograd(native, device, b, shape):
    x = (torch.randn(shape, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    g = torch.randn_like(x)
    (gn,) = torch.autograd.grad(EF.restore_activation(x, b)[0], x, g)
    x2 = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(R.restore_activation_autograd(x2, b), x2, g)
    torch.testing.assert_close(gn, gr, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backward_isas_dtypes(native, isa, dtype):
    x = (torch.randn(3, 5, 70, 70) + 0.2).to(dtype)  # 24500 per sample: two blocks
    g = torch.randn_like(x)
    y, mean, sigma, rms = ops.restore_activation(x)
    got = ops.restore_activation_backward(g, x, mean, sigma, rms, 0.5).double()
    want = R.restore_activation_backward(g.double(), x.double(), mean.double(), sigma.double(), rms.double(), 0.5)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


def test_explicit_reference_backward_matches_autograd():
    x = (torch.randn(6, 3, 5, 5, dtype=torch.float64) - 0.3).requires_grad_()
    g = torch.randn_like(x)
    (ga,) = torch.autograd.grad(R.restore_activation_autograd(x, 0.7), x, g)
    _, mean, sigma, rms = R.restore_activation(x.detach())
    torch.testing.assert_close(R.restore_activation_backward(g, x.detach(), mean, sigma, rms, 0.7), ga)


def test_gradcheck_reference(monkeypatch):
    """The reference's autograd twin with sign replaced by a smooth antiderivative of the surrogate,
    h * tanh(x / b): its backward (surrogate + batch mean + sigma) is then the true derivative."""
    b = 1.3
    monkeypatch.setattr(R, "sign", lambda x: max(b, 1.0) * torch.tanh(x / b))
    x = (torch.randn(3, 2, 2, 2, dtype=torch.float64) + 0.4).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: R.restore_activation_autograd(t, b), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fixed_statistics(native, device, dtype):
    x = torch.randn(5, 4, 7, 7, device=device).to(dtype)
    mean, sigma = torch.tensor(0.1, device=device), torch.tensor(0.8, device=device)
    if dtype == torch.float64:
        mean, sigma = mean.double(), sigma.double()
    assert torch.equal(ops.restore_activation_fixed(x, mean, sigma), R.restore_activation_fixed(x, mean, sigma))
    g = torch.randn_like(x)
    got = ops.restore_activation_fixed_backward(g, x, mean, sigma, 0.6)
    want = R.restore_activation_fixed_backward(g, x, mean, sigma, 0.6)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_statistics_functional_gradient(native, device):
    x = torch.randn(4, 9, dtype=torch.float64, device=device, requires_grad=True)
    y, m, s = EF.restore_activation(x, 0.5, stats=(0.2, 1.1))
    g = torch.randn_like(x)
    (gx,) = torch.autograd.grad(y, x, g)
    xhat = (x.detach() - 0.2) / 1.1
    torch.testing.assert_close(gx, g * R.surrogate_grad(xhat, 0.5))


def test_fixed_isas(native, isa):
    x = torch.randn(3, 50000)
    mean, sigma = torch.tensor(-0.05), torch.tensor(1.3)
    assert torch.equal(ops.restore_activation_fixed(x, mean, sigma), R.restore_activation_fixed(x, mean, sigma))
    g = torch.randn_like(x)
    torch.testing.assert_close(ops.restore_activation_fixed_backward(g, x, mean, sigma, 0.4),
                               R.restore_activation_fixed_backward(g.double(), x.double(), mean.double(),
                                                                   sigma.double(), 0.4).float(),
                               rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous(native, device):
    x = torch.randn(6, 6, 8, 5, device=device).permute(3, 1, 0, 2)
    assert not x.is_contiguous()
    _check_forward(x)
    g = torch.randn(8, 6, 6, 5, device=device).permute(3, 2, 1, 0)
    _, mean, sigma, rms = ops.restore_activation(x)
    torch.testing.assert_close(ops.restore_activation_backward(g, x, mean, sigma, rms, 0.5),
                               R.restore_activation_backward(g, x, mean, sigma, rms, 0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (3, 0), (0,)])
def test_empty(native, device, shape):
    x = torch.empty(shape, device=device, requires_grad=True)
    y, mean, sigma = EF.restore_activation(x)
    assert y.shape == x.shape and mean.shape == sigma.shape == ()
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert ops.restore_activation_fixed(x.detach(), mean, sigma).shape == x.shape


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raises(native, isa, bad):
    x = torch.randn(4, 3, 100, 100)
    x[2, 1, 50, 60] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        ops.restore_activation(x)
    x[0, 0, 0, 0] = bad  # the first element of a sample is the shift of its sums
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        ops.restore_activation(x)


def test_fixed_nan_raises(native, isa):
    x = torch.randn(2, 40000)
    x[1, 39999] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN"):
        ops.restore_activation_fixed(x, torch.tensor(0.0), torch.tensor(1.0))


@pytest.mark.parametrize("device", DEVICES)
def test_constant_input(native, device):
    x = torch.full((3, 2, 4, 4), 0.75, dtype=torch.float64, device=device, requires_grad=True)
    y, mean, sigma = EF.restore_activation(x, 0.5)
    assert sigma.item() == 0.0 and mean.item() == 0.75
    assert torch.all(y == 0.75)  # sigma * (+1) + mean
    (gx,) = torch.autograd.grad(y, x, torch.randn_like(x))
    assert torch.isfinite(gx).all()


def test_bad_arguments(native):
    with pytest.raises(TypeError, match="x must be"):
        ops.restore_activation(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch dimension"):
        ops.restore_activation(torch.tensor(1.0))
    x = torch.randn(3, 4)
    _, mean, sigma, rms = ops.restore_activation(x)
    with pytest.raises(RuntimeError, match="shape"):
        ops.restore_activation_backward(torch.randn(4, 3), x, mean, sigma, rms, 0.5)
    with pytest.raises(RuntimeError, match="sample_rms"):
        ops.restore_activation_backward(torch.randn(3, 4), x, mean, sigma, rms[:2], 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for name in ("restore_activation", "_restore_activation_backward", "restore_activation_fixed",
                 "_restore_activation_fixed_backward"):
        if not ops.has_kernel(name, device):
            pytest.fail(f"{name} {device} kernel missing")
    E = torch.ops.erbnn
    x = torch.randn(4, 3, 5, 5, device=device)
    b = torch.tensor(0.5, device=device)
    torch.library.opcheck(E.restore_activation.default, (x,))
    _, mean, sigma, rms = E.restore_activation(x)
    g = torch.randn_like(x)
    torch.library.opcheck(E._restore_activation_backward.default, (g, x, mean, sigma, rms, b))
    torch.library.opcheck(E.restore_activation_fixed.default, (x, mean, sigma))
    torch.library.opcheck(E._restore_activation_fixed_backward.default, (g, x, mean, sigma, b))


def test_torch_compile_fullgraph(native):
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    fn = torch.compile(lambda t: EF.restore_activation(t, 0.5)[0], fullgraph=True, backend="aot_eager")
    out = fn(x)
    assert torch.equal(out, EF.restore_activation(x.detach(), 0.5)[0])
    g = torch.randn_like(x)
    (gc,) = torch.autograd.grad(out, x, g)
    (ge,) = torch.autograd.grad(EF.restore_activation(x, 0.5)[0], x, g)
    torch.testing.assert_close(gc, ge)


@pytest.mark.cuda
def test_cuda_non_finite_propagates_nan(native):
    """No host sync in the CUDA forward: NaN/Inf poison mean, sigma and y."""
    x = torch.randn(4, 3, 8, 8, device="cuda")
    x[1, 2, 3, 4] = float("inf")
    y, mean, sigma = EF.restore_activation(x)
    assert not torch.isfinite(mean) or not torch.isfinite(sigma)
    assert torch.isnan(y).all()
