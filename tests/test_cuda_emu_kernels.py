"""Every CUDA kernel launch site of csrc/cuda, run on the CPU by the CUDA emulator (erbnn_ext._C_emu,
torch.ops.erbnn_emu) in every dtype it is instantiated for, under several fiber schedules, against the
CPU kernels (torch.ops.erbnn): exact where the math is exact (signs, packed bits, popcount convolutions,
the quantile's selection), tight tolerances where the two sum in different orders or call different
libm's tanh. Each test also checks which launch sites ran, so a path that silently fell back fails."""
import os
import re
from pathlib import Path

import pytest
import torch

import erbnn_ext  # noqa: F401  (torch.ops.erbnn: the CPU kernels)
from erbnn_ext import _emu
from emu_support import emu_ops

pytestmark = pytest.mark.cuda_emu
C = torch.ops.erbnn
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# In order (catches a missing barrier before a read of what later threads write), warps ahead (one warp
# overwriting shared memory the others have not read yet), and a seeded random interleaving.
KERNEL_SCHEDULES = ["inorder", "ahead", "random:3"]
CUDA_DIR = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
# float64 results of sums in another order; float32 statistics rounded from float64 sums; half types: 1 ulp
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def launch_sites():
    """Every ERBNN_LAUNCH in csrc/cuda, as the emulator names it: "file:line"."""
    sites = set()
    for f in sorted(CUDA_DIR.glob("*.cu*")):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\bERBNN_LAUNCH\(", line) and not line.lstrip().startswith(("//", "#")):
                sites.add(f"{f.name}:{i}")
    return sites


def site_of(kernel):
    """The site that launches `kernel` (its name on the ERBNN_LAUNCH line)."""
    found = {s for s in launch_sites() if re.search(rf"\b{kernel}\b", _line(s))}
    assert len(found) >= 1, kernel
    return found


def _line(site):
    name, line = site.split(":")
    return (CUDA_DIR / name).read_text().splitlines()[int(line) - 1]


@pytest.fixture(params=KERNEL_SCHEDULES)
def E(request):
    e = emu_ops()
    with _emu.schedule(request.param):
        _emu.reset_launch_counts()
        yield e


def ran():
    return {s for s in _emu.launch_counts() if ".cu" in s}


def close(got, want, dtype=None):
    tol = TOL[dtype or want.dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, equal_nan=True)


def as_cuda_words(packed64, n):
    """The CPU's int64 sign words as CUDA's int32 words (little-endian halves), ceil(n / 32) of them."""
    return packed64.contiguous().view(torch.int32)[..., : (n + 31) // 32]


# ------------------------------------------------------------------------------------- restoration
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (3, 700)])
def test_restore_weight(E, dtype, shape):
    w = torch.randn(shape).to(dtype)
    w_b, mean, alpha = E.restore_weight(w)
    r_b, r_mean, r_alpha = C.restore_weight(w)
    assert torch.equal(w_b, r_b)
    close(mean, r_mean, dtype), close(alpha, r_alpha, dtype)
    g = torch.randn(shape).to(dtype)
    b = torch.tensor(0.7, dtype=r_mean.dtype)
    close(E._restore_weight_backward(g, w, mean, alpha, b), C._restore_weight_backward(g, w, r_mean, r_alpha, b))
    assert ran() == site_of("weight_forward_kernel") | site_of("weight_backward_kernel")


def test_restore_weight_nonfinite_propagates(E):
    w = torch.randn(3, 40)
    w[1, 5] = float("nan")
    w_b, mean, alpha = E.restore_weight(w)
    assert torch.isnan(w_b[1]).all() and torch.isnan(mean[1]) and not torch.isnan(w_b[[0, 2]]).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 5, 7), (2, 4100)])  # one partials block per sample; two
def test_restore_activation(E, dtype, shape):
    x = torch.randn(shape).to(dtype)
    y, mean, sigma, rms = E.restore_activation(x)
    r_y, r_mean, r_sigma, r_rms = C.restore_activation(x)
    close(mean, r_mean, dtype), close(sigma, r_sigma, dtype), close(rms, r_rms, dtype), close(y, r_y)
    assert torch.equal(y > mean.to(dtype), r_y > r_mean.to(dtype))  # the signs exactly
    g = torch.randn(shape).to(dtype)
    b = torch.tensor(0.6, dtype=r_mean.dtype)
    close(E._restore_activation_backward(g, x, mean, sigma, rms, b),
          C._restore_activation_backward(g, x, r_mean, r_sigma, r_rms, b))
    close(E.restore_activation_fixed(x, r_mean, r_sigma), C.restore_activation_fixed(x, r_mean, r_sigma))
    close(E._restore_activation_fixed_backward(g, x, r_mean, r_sigma, b),
          C._restore_activation_fixed_backward(g, x, r_mean, r_sigma, b))
    want = set().union(*(site_of(k) for k in ("stats_partials_kernel", "stats_combine_kernel", "two_values_kernel",
                                               "grad_partials_kernel", "grad_combine_kernel", "grad_write_kernel",
                                               "fixed_grad_kernel")))
    assert ran() == want


@pytest.mark.parametrize("dtype", DTYPES)
def test_approx_sign(E, dtype):
    x = torch.randn(3, 300).to(dtype)
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30]).to(dtype)
    assert torch.equal(E.approx_sign(x), C.approx_sign(x))
    g = torch.randn_like(x)
    b = torch.tensor(0.8, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    close(E._approx_sign_backward(g, x, b), C._approx_sign_backward(g, x, b))
    assert ran() == site_of("sign_kernel") | site_of("surrogate_kernel")


def test_grid_stride_loops(E):
    # One multiprocessor: grid_for caps the grid at 32 blocks of 256 threads, so 9000 elements take two
    # trips through each elementwise kernel's grid-stride loop.
    with _emu.device(sm_count=1):
        x = torch.randn(3, 3000)
        g = torch.randn_like(x)
        b = torch.tensor(0.8)
        assert torch.equal(E.approx_sign(x), C.approx_sign(x))
        close(E._approx_sign_backward(g, x, b), C._approx_sign_backward(g, x, b))
        y, m, s, _ = C.restore_activation(x)
        close(E.restore_activation_fixed(x, m, s), y)
        assert torch.equal(E.unpack_signs(E.pack_signs(x, 1), 3000, 1), C.unpack_signs(C.pack_signs(x, 1), 3000, 1))
        xs = torch.randn(300_000)  # 9375 words: past the 8192 threads of the capped grid
        assert torch.equal(E.pack_signs(xs, 0), as_cuda_words(C.pack_signs(xs, 0), 300_000))


def test_compute_capability_picks_the_conv_kernel(E):
    x, w = torch.randn(1, 40, 5, 5), torch.randn(8, 40, 3, 3)
    for cc, kernel in (((7, 5), "conv_kernel"), ((8, 0), "conv_mma_kernel")):
        with _emu.device(cc=cc):
            _emu.reset_launch_counts()
            assert torch.equal(E.binary_conv2d(x, w, [1, 1], [1, 1], [1, 1]), C.binary_conv2d(x, w, [1, 1], [1, 1], [1, 1]))
            assert site_of(kernel) <= ran()


# ------------------------------------------------------------------------------------- quantile
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 33, 5000])
def test_two_sided_quantile(E, dtype, n):
    x = torch.randn(n).to(dtype)
    if n == 5000:
        x = (x * 4).round()  # ties, zeros in both halves
    for p in (0.0, 0.5, 0.8, 1.0):
        assert torch.equal(E.two_sided_quantile(x, p), C.two_sided_quantile(x, p)), p
    want = set().union(*(site_of(k) for k in ("digit_histogram_kernel", "select_kernel", "min_above_kernel",
                                               "finalize_kernel")))
    assert ran() == want


def test_two_sided_quantile_one_sided_and_nonfinite(E):
    x = torch.rand(3000) + 0.5  # no value <= 0: one half empty
    assert torch.equal(E.two_sided_quantile(x, 0.3), C.two_sided_quantile(x, 0.3))
    x[7] = float("inf")
    assert torch.isnan(E.two_sided_quantile(x, 0.3))  # CUDA: NaN instead of the CPU's ValueError


# ------------------------------------------------------------------------------------- training ops
def ring(size, count):
    return [torch.arange(size, dtype=torch.float64) * 0.1 + 0.3, torch.tensor(count)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [0, 5])
def test_training_ops(E, dtype, count):
    p = torch.tensor(0.8, dtype=torch.float64)
    w, x = torch.randn(6, 5, 3, 3).to(dtype), torch.randn(3, 4, 5, 7).to(dtype)
    for name, t, state in (("restore_weight_train", w, ring(3, count) + [torch.tensor(0.25, dtype=torch.float64)]),
                           ("restore_activation_train", x,
                            ring(3, count) + [torch.tensor(0.25, dtype=torch.float64)] + ring(4, count) + ring(4, count))):
        st_emu = [s.clone() for s in state]
        got = getattr(E, name)(t, p, *st_emu, 0.1)
        want = getattr(C, name)(t, p, *state, 0.1)
        for g, r in zip(got, want):
            close(g, r, dtype if g.dtype == t.dtype else None)
        for g, r in zip(st_emu, state):
            if g.dtype == torch.int64:
                assert torch.equal(g, r)
            else:
                close(g, r, torch.float32 if dtype != torch.float64 else torch.float64)
    assert site_of("ring_update_kernel") <= ran()
    assert site_of("digit_histogram_kernel") | site_of("weight_forward_kernel") | site_of("stats_combine_kernel") <= ran()


# ------------------------------------------------------------------------------------- packing
@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_and_unpack_signs(E, dtype):
    x = torch.randn(2, 65, 3).to(dtype)
    x[0, :3, 0] = torch.tensor([0.0, -0.0, -1e-30]).to(dtype)
    for dim in (1, 2, -1):
        packed = E.pack_signs(x, dim)
        n = x.shape[dim]
        assert torch.equal(packed, as_cuda_words(C.pack_signs(x, dim), n))
        assert torch.equal(E.unpack_signs(packed, n, dim), C.unpack_signs(C.pack_signs(x, dim), n, dim))
    assert ran() == site_of("pack_kernel") | site_of("unpack_kernel")


def test_pack_signs_nan_is_an_error(E):
    x = torch.randn(4, 40)
    x[2, 33] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        E.pack_signs(x, 1)


def test_pack_conv_weight(E):
    w = torch.randn(7, 70, 3, 2)
    assert torch.equal(E.pack_conv_weight(w), as_cuda_words(C.pack_conv_weight(w), 70))


# ------------------------------------------------------------------------------------- convolutions
@pytest.fixture(params=["mma", "popc"])
def kernel(request, monkeypatch):
    monkeypatch.setenv("ERBNN_CUDA_MMA", "1" if request.param == "mma" else "0")
    return request.param


CONVS = [  # x shape, w shape, stride, padding, dilation: word tails, partial tiles, > 1 tile of channels
    ((2, 70, 7, 6), (5, 70, 3, 3), [1, 1], [1, 1], [1, 1]),
    ((1, 33, 9, 9), (3, 33, 3, 3), [2, 2], [0, 1], [1, 2]),
    ((2, 130, 5, 5), (66, 130, 1, 1), [1, 1], [0, 0], [1, 1]),
    ((2, 3, 8, 7), (9, 3, 3, 3), [1, 1], [1, 1], [1, 1]),   # C < 32: the tensor cores' dense layout
    ((1, 20, 6, 6), (33, 20, 2, 3), [1, 2], [1, 0], [2, 1]),  # dense layout, taps across words
]


def conv_sites(kernel, c):
    main = site_of("conv_mma_kernel") if kernel == "mma" else site_of("conv_kernel")
    dense = site_of("dense_weights_kernel") if kernel == "mma" and c < 32 else set()
    return main | dense | site_of("tap_pop_kernel") | site_of("pack_kernel")


@pytest.mark.parametrize("case", CONVS, ids=lambda c: "x" + "x".join(map(str, c[0])))
def test_binary_conv2d(E, kernel, case):
    xs, ws, st, pd, dl = case
    x, w = torch.randn(xs), torch.randn(ws)
    assert torch.equal(E.binary_conv2d(x, w, st, pd, dl), C.binary_conv2d(x, w, st, pd, dl))
    assert ran() == conv_sites(kernel, xs[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_conv2d_dtypes(E, kernel, dtype):
    x, w = torch.randn(2, 40, 5, 5).to(dtype), torch.randn(6, 40, 3, 3).to(dtype)
    assert torch.equal(E.binary_conv2d(x, w, [1, 1], [1, 1], [1, 1]), C.binary_conv2d(x, w, [1, 1], [1, 1], [1, 1]))


def test_binary_linear(E, kernel):
    x, w = torch.randn(37, 129), torch.randn(21, 129)
    assert torch.equal(E.binary_linear(x, w), C.binary_linear(x, w))


@pytest.mark.parametrize("case", CONVS[:4], ids=lambda c: "x" + "x".join(map(str, c[0])))
def test_fused_tail_epilogue(E, kernel, case):
    xs, ws, st, pd, dl = case
    x, w = torch.randn(xs), torch.randn(ws)
    o = ws[0]
    scale, bias, ones = torch.randn(o), torch.randn(o), torch.randn(o)
    shift = torch.tensor([0.1])
    out_shape = C.binary_conv2d(x, w, st, pd, dl).shape
    residual, act = torch.randn(out_shape), torch.randn(3, o)
    got = E.binary_conv2d_packed(x, E.pack_conv_weight(w), st, pd, dl, shift, scale, bias, ones, residual, act)
    want = C.binary_conv2d_packed(x, C.pack_conv_weight(w), st, pd, dl, shift, scale, bias, ones, residual, act)
    assert torch.equal(got, want)


@pytest.mark.parametrize("cin", [40, 64, 3])
def test_chained_bits(E, kernel, cin):
    x, w = torch.randn(2, cin, 6, 5), torch.randn(70, cin, 3, 3)
    scale, bias = torch.randn(70), torch.randn(70)
    nxt = torch.tensor([0.2])
    xbits = E.pack_signs(x, 1)  # [N, H, W, Cw] after moving C last
    assert xbits.shape == (2, 6, 5, (cin + 31) // 32)
    got_out, got_bits = E.binary_conv2d_bits(xbits, E.pack_conv_weight(w), [1, 1], [1, 1], [1, 1], cin, None,
                                             scale, bias, None, None, None, nxt, True)
    want_out, want_bits = C.binary_conv2d_bits(x, C.pack_conv_weight(w), [1, 1], [1, 1], [1, 1], -1, None,
                                               scale, bias, None, None, None, nxt, True)
    assert torch.equal(got_out, want_out)
    assert torch.equal(got_bits, as_cuda_words(want_bits, 70))
    _, bits_only = E.binary_conv2d_bits(xbits, E.pack_conv_weight(w), [1, 1], [1, 1], [1, 1], cin, None,
                                        scale, bias, None, None, None, nxt, False)
    assert torch.equal(bits_only, got_bits)
    if cin % 32:
        assert site_of("x_tail_bits_kernel") <= ran()


def test_conv_nan_and_tail_bits_give_nan(E, kernel):
    x, w = torch.randn(1, 40, 4, 4), torch.randn(3, 40, 3, 3)
    x[0, 5, 1, 1] = float("nan")
    assert torch.isnan(E.binary_conv2d(x, w, [1, 1], [1, 1], [1, 1])).all()  # no host sync: NaN, not raise
    wp = E.pack_conv_weight(w)
    wp[0, 0, 0, 1] |= 1 << 20  # a tail bit beyond C = 40
    out = E.binary_conv2d_packed(torch.randn(1, 40, 4, 4), wp, [1, 1], [1, 1], [1, 1])
    assert torch.isnan(out).all()


# ------------------------------------------------------------------------------------- coverage
def test_every_launch_site_runs():
    """One pass over the ops (in order) runs each of csrc/cuda's launch sites; the grep must find 24."""
    E = emu_ops()
    sites = launch_sites()
    assert len(sites) == 24, sorted(sites)
    _emu.reset_launch_counts()
    x4, w4 = torch.randn(2, 20, 5, 5), torch.randn(40, 20, 3, 3)
    st = [torch.zeros(3, dtype=torch.float64), torch.tensor(0), torch.tensor(0.25, dtype=torch.float64)]
    E.restore_weight_train(w4, torch.tensor(0.8, dtype=torch.float64), *st, 0.1)
    w_b, mean, alpha = E.restore_weight(w4)
    E._restore_weight_backward(torch.randn_like(w4), w4, mean, alpha, torch.tensor(0.5))
    y, m, s, rms = E.restore_activation(x4)
    E._restore_activation_backward(torch.randn_like(x4), x4, m, s, rms, torch.tensor(0.5))
    E.restore_activation_fixed(x4, m, s)
    E._restore_activation_fixed_backward(torch.randn_like(x4), x4, m, s, torch.tensor(0.5))
    E.approx_sign(x4), E._approx_sign_backward(torch.randn_like(x4), x4, torch.tensor(0.5))
    E.two_sided_quantile(x4, 0.7)
    E.unpack_signs(E.pack_signs(x4, 1), 20, 1)
    os.environ["ERBNN_CUDA_MMA"] = "0"
    try:
        E.binary_conv2d(x4, w4, [1, 1], [1, 1], [1, 1])
    finally:
        os.environ.pop("ERBNN_CUDA_MMA")
    E.binary_conv2d_bits(E.pack_signs(x4, 1), E.pack_conv_weight(w4), [1, 1], [1, 1], [1, 1], 20, None, None, None,
                         None, None, None, torch.tensor([0.0]), True)
    assert ran() == sites, sorted(sites - ran())
