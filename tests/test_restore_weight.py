"""Weight restoration (method.md section 1): native kernels against erbnn_ext.reference."""
import pytest
import torch

from erbnn_ext import functional as EF, ops, reference as R

from conftest import DEVICES

LOW = (torch.float16, torch.bfloat16)


def _stats64(w):
    rows = w.double().reshape(w.shape[0], -1)
    mean = rows.mean(1)
    return mean, (rows - mean[:, None]).pow(2).mean(1).sqrt()


def _check_forward(w):
    w_b, mean, alpha = ops.restore_weight(w)
    rb, _, _ = R.restore_weight(w)
    assert w_b.dtype == w.dtype and w_b.shape == w.shape
    assert mean.dtype == alpha.dtype == (torch.float64 if w.dtype == torch.float64 else torch.float32)
    assert torch.equal(w_b, rb)
    m64, a64 = _stats64(w.cpu())
    torch.testing.assert_close(alpha.cpu().double(), a64, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(mean.cpu().double(), m64, rtol=1e-6, atol=1e-6 * float(a64.max()))


@pytest.mark.parametrize("O", [1, 3, 64, 513])
@pytest.mark.parametrize("n", [1, 9, 577, 4608])
def test_forward_shapes_isas(native, isa, O, n):
    _check_forward(torch.randn(O, n) * 0.1 + 0.02)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_forward_dtypes(native, device, dtype):
    _check_forward(torch.randn(37, 16, 3, 3, device=device).to(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_sign_zero_is_plus_one(native, device):
    w = torch.tensor([[-1.0, 0.0, 1.0], [2.0, 2.0, 2.0]], device=device)  # mean 0: element 0 -> +1
    w_b, mean, alpha = EF.restore_weight(w)
    assert w_b.tolist() == [[-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b", [0.1, 0.7, 2.5])
@pytest.mark.parametrize("shape", [(1, 2), (5, 3, 3, 3), (64, 577)])  # n=1: alpha=0, sqrt'(0) NaN in autograd
def test_gradient_matches_reference_autograd(native, device, b, shape):
    w = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn_like(w)
    (gn,) = torch.autograd.grad(EF.restore_weight(w, b)[0], w, g)
    w2 = w.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(R.restore_weight_autograd(w2, b), w2, g)
    torch.testing.assert_close(gn, gr, rtol=1e-9, atol=1e-12)


def test_explicit_reference_backward_matches_autograd():
    w = torch.randn(7, 50, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(w)
    (ga,) = torch.autograd.grad(R.restore_weight_autograd(w, 0.6), w, g)
    _, mean, alpha = R.restore_weight(w.detach())
    torch.testing.assert_close(R.restore_weight_backward(g, w.detach(), mean, alpha, 0.6), ga)


def test_gradcheck_reference(monkeypatch):
    """The reference's autograd twin with sign replaced by a smooth antiderivative of the surrogate,
    h * tanh(x / b): its backward (surrogate + standardisation) is then the true derivative."""
    b = 0.8
    monkeypatch.setattr(R, "sign", lambda x: max(b, 1.0) * torch.tanh(x / b))
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: R.restore_weight_autograd(t, b), (w,))


@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
def test_backward_low_precision(native, isa, dtype):
    w = torch.randn(32, 300).to(dtype)
    g = torch.randn_like(w)
    _, mean, alpha = ops.restore_weight(w)
    got = ops.restore_weight_backward(g, w, mean, alpha, 0.5).float()
    want = R.restore_weight_backward(g.double(), w.double(), mean.double(), alpha.double(), 0.5).float()
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous(native, device):
    w = torch.randn(9, 64, 3, 3, device=device).transpose(0, 1)
    assert not w.is_contiguous()
    _check_forward(w)
    g = torch.randn(3, 3, 64, 9, device=device).permute(2, 3, 0, 1)
    _, mean, alpha = ops.restore_weight(w)
    torch.testing.assert_close(ops.restore_weight_backward(g, w, mean, alpha, 0.5),
                               R.restore_weight_backward(g, w, mean, alpha, 0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 3, 3), (4, 0, 3, 3), (0,)])
def test_empty(native, device, shape):
    w = torch.empty(shape, device=device, requires_grad=True)
    w_b, mean, alpha = EF.restore_weight(w)
    assert w_b.shape == w.shape and mean.shape == alpha.shape == (shape[0],)
    w_b.sum().backward()
    assert w.grad.shape == w.shape and not w.grad.abs().sum()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raises(native, isa, bad):
    w = torch.randn(8, 40)
    w[5, 17] = bad
    with pytest.raises(ValueError, match="w contains NaN or Inf"):
        ops.restore_weight(w)


@pytest.mark.parametrize("device", DEVICES)
def test_constant_channel(native, device):
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, device=device)
    w[1] = 0.375  # exact sums: alpha is exactly 0
    w.requires_grad_()
    w_b, mean, alpha = EF.restore_weight(w, 0.5)
    assert alpha[1].item() == 0.0 and mean[1].item() == 0.375
    assert torch.all(w_b[1] == 1)
    g = torch.randn_like(w)
    (gn,) = torch.autograd.grad(w_b, w, g)
    assert torch.isfinite(gn).all()
    _, m, a = R.restore_weight(w.detach())
    torch.testing.assert_close(gn, R.restore_weight_backward(g, w.detach(), m, a, 0.5))


def test_bad_arguments(native):
    with pytest.raises(TypeError, match="w must be"):
        ops.restore_weight(torch.ones(3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ops.restore_weight(torch.tensor(1.0))
    w = torch.randn(3, 4)
    _, mean, alpha = ops.restore_weight(w)
    with pytest.raises(RuntimeError, match="shape"):
        ops.restore_weight_backward(torch.randn(4, 3), w, mean, alpha, 0.5)
    with pytest.raises(ValueError, match="surrogate width"):
        ops.restore_weight_backward(torch.randn(3, 4), w, mean, alpha, 0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    if not ops.has_kernel("restore_weight", device):
        pytest.fail(f"restore_weight {device} kernel missing")
    w = torch.randn(6, 5, 3, 3, device=device)
    torch.library.opcheck(torch.ops.erbnn.restore_weight.default, (w,))
    _, mean, alpha = torch.ops.erbnn.restore_weight(w)
    torch.library.opcheck(torch.ops.erbnn._restore_weight_backward.default,
                          (torch.randn_like(w), w, mean, alpha, torch.tensor(0.5, device=device)))


def test_torch_compile_fullgraph(native):
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    fn = torch.compile(lambda t: EF.restore_weight(t, 0.5)[0], fullgraph=True, backend="aot_eager")
    out = fn(w)
    assert torch.equal(out, R.restore_weight(w.detach())[0])
    g = torch.randn_like(w)
    (gc,) = torch.autograd.grad(out, w, g)
    (ge,) = torch.autograd.grad(EF.restore_weight(w, 0.5)[0], w, g)
    torch.testing.assert_close(gc, ge)


@pytest.mark.cuda
def test_cuda_non_finite_propagates_nan(native):
    """No host sync in the CUDA forward: NaN/Inf poison that channel's statistics and signs."""
    w = torch.randn(4, 50, device="cuda")
    w[2, 7] = float("nan")
    w_b, mean, alpha = EF.restore_weight(w)
    assert torch.isnan(mean[2]) and torch.isnan(w_b[2]).all()
    assert torch.isfinite(mean[[0, 1, 3]]).all() and torch.equal(w_b[[0, 1, 3]], R.restore_weight(w[[0, 1, 3]])[0])


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_float64_signs(native, isa, device):
    """float64 weights far below float32's range keep their signs (and equal the reference's)."""
    w = torch.tensor([[1e-300, -1e-300, 2e-300, -3e-300], [-1e-310, 1e-310, 0.0, -0.0]], dtype=torch.float64)
    w_b, mean, alpha = ops.restore_weight(w.to(device))
    rb, rm, ra = R.restore_weight(w)
    assert torch.equal(w_b.cpu(), rb)
    assert w_b[0].tolist() == [1.0, -1.0, 1.0, -1.0]
    assert torch.isclose(mean.cpu(), rm, rtol=1e-12, atol=0).all() and torch.isclose(alpha.cpu(), ra, rtol=1e-12, atol=0).all()
