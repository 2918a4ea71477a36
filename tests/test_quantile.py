"""two_sided_quantile (method.md section 3): max(Q_p(|x[x<=0]|), Q_p(x[x>=0])), numpy's linear
interpolation, exact over all elements. Checked against numpy.quantile in float64 (to 1 float32 ulp)
and bit for bit against the sorting reference."""
import numpy as np
import pytest
import torch

from erbnn_ext import functional as EF, ops, reference as R

from conftest import DEVICES

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BIG = 30_000_001  # > 2^24 = 16,777,216: torch.quantile refuses it, the kernel must not


def numpy_two_sided(x, ps):
    """The spec in numpy, for each p in ps: float64 halves (zeros in both), numpy.quantile(method="linear")."""
    v = x.detach().cpu().double().reshape(-1).numpy()
    halves = [h for h in (-v[v <= 0], v[v >= 0]) if h.size]
    return np.max([np.quantile(h, ps, method="linear") for h in halves], axis=0).tolist()


def assert_within_ulp(got, expected):
    """got (0-dim float32) is within 1 float32 ulp of the float64 value expected."""
    assert got.dtype == torch.float32 and got.dim() == 0
    g = np.array(got.item(), dtype=np.float32).view(np.int32)
    e = np.array(abs(expected), dtype=np.float32).view(np.int32)  # both >= 0: bit order is value order
    assert abs(int(g) - int(e)) <= 1, (got.item(), expected)  # abs: numpy gives -0.0 for -(+0.0)


def check(x, ps):
    """The kernel (through ops) against numpy for every p in ps, and bit for bit against the sorting
    reference on smaller inputs (it rounds the same double the kernel does)."""
    for p, expected in zip(ps, numpy_two_sided(x, ps)):
        got = ops.two_sided_quantile(x, p)
        assert_within_ulp(got, expected)
        if x.numel() <= 40_000:
            assert got.item() == R.two_sided_quantile(x.cpu(), p).item()


def ps():
    return [0.0, 1.0, 0.8, 0.5, float(torch.rand(()))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097, 100_003])
def test_matches_numpy(native, isa, n, dtype):
    x = torch.randn(n).to(dtype)
    check(x, ps())


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_numpy_million(native, isa, dtype):
    x = torch.randn(1_000_003).to(dtype)
    check(x, [0.8, float(torch.rand(()))])


@pytest.fixture(scope="module")
def big():
    x = torch.randn(BIG, generator=torch.Generator().manual_seed(1))
    expected = dict(zip((0.8, 0.123), numpy_two_sided(x, [0.8, 0.123])))
    return x, expected


def test_above_2_pow_24(native, isa, big):
    x, expected = big
    for p, e in expected.items():
        assert_within_ulp(ops.two_sided_quantile(x, p), e)


def _case(kind, n, dtype):
    x = torch.randn(n)
    if kind == "ties":  # a few distinct values, each repeated many times
        x = torch.randint(-4, 5, (n,)).float() * 0.25
    elif kind == "all_negative":
        x = -x.abs() - 1e-3
    elif kind == "all_positive":
        x = x.abs() + 1e-3
    elif kind == "zeros":  # +0.0 and -0.0 only: both halves hold every element
        x = torch.zeros(n)
        x[::3] = -0.0
    elif kind == "mostly_zeros":
        x = torch.where(torch.rand(n) < 0.9, torch.zeros(n), x)
    elif kind == "wide":  # magnitudes from 1e-30 to 1e30: many exponents, empty and full buckets
        x = torch.sign(x) * 10 ** (torch.rand(n) * 60 - 30)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["ties", "all_negative", "all_positive", "zeros", "mostly_zeros", "wide"])
@pytest.mark.parametrize("n", [1, 7, 33_333])
def test_special_data(native, isa, kind, n, dtype):
    x = _case(kind, n, dtype)
    if dtype in (torch.float16, torch.bfloat16) and kind == "wide":
        x = x.clamp(-6e4, 6e4)  # stay finite in float16
    check(x, ps())


@pytest.mark.parametrize("kind", ["ties", "all_negative", "zeros", "mostly_zeros", "wide"])
def test_special_data_several_chunks(native, isa, kind):
    # above 2^18 elements the CPU kernel splits x into chunks that gather their candidates apart
    check(_case(kind, 700_001, torch.float32), [0.8, float(torch.rand(()))])


def test_one_half_empty_takes_the_other(native):
    x = torch.tensor([1.0, 2.0, 4.0])
    assert ops.two_sided_quantile(x, 0.5).item() == 2.0
    assert ops.two_sided_quantile(-x, 0.25).item() == 1.5


def test_zero_is_in_both_halves(native):
    # negative half |{-3, 0}| = {0, 3}: Q_0.5 = 1.5; positive half {0, 1}: Q_0.5 = 0.5
    assert ops.two_sided_quantile(torch.tensor([-3.0, 0.0, 1.0]), 0.5).item() == 1.5


@pytest.mark.parametrize("second", [
    np.nextafter(np.float32(1), np.float32(2)),  # next key in the last digit's bucket
    np.float32(1 + 2.0 ** -12),                  # differs in the middle digit: same top bucket
    np.float32(2.0),                             # next top bucket: found by the extra pass over x
    np.float32(1e30),                            # far away
])
@pytest.mark.parametrize("p", [0.52, 0.55, 0.999])
def test_neighbour_ranks_in_other_buckets(native, isa, second, p):
    # rank lo is 1.0 and rank lo+1 is `second`, wherever its key's digits lie
    x = torch.tensor([1.0, float(second), -0.5, 0.25], dtype=torch.float32).repeat_interleave(
        torch.tensor([5, 5, 1, 1]))
    check(x, [p])


def test_non_contiguous(native, isa):
    base = torch.randn(400, 300)
    for x in (base.t(), base[::3, 1::2], base.t()[::2]):
        assert not x.is_contiguous()
        check(x, [0.7])


def test_functional_and_reference_backend_agree(native):
    x = torch.randn(5000, requires_grad=True)
    q = EF.two_sided_quantile(x, 0.8)
    assert not q.requires_grad
    assert q.item() == R.two_sided_quantile(x.detach(), 0.8).item()


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(native, device):
    x = torch.randn(10, device=device)
    for p in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match="p must be in"):
            torch.ops.erbnn.two_sided_quantile(x, p)
    with pytest.raises(ValueError, match="empty"):
        torch.ops.erbnn.two_sided_quantile(torch.empty(0, 3, device=device), 0.5)
    with pytest.raises(TypeError, match="x must be"):
        torch.ops.erbnn.two_sided_quantile(torch.arange(10, device=device), 0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_raises_on_cpu(native, bad, dtype):
    x = torch.randn(100_000)
    x[77_777] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        torch.ops.erbnn.two_sided_quantile(x.to(dtype), 0.5)


@pytest.mark.cuda
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gives_nan_on_cuda(native, bad):
    # CUDA reports NaN/Inf through a NaN result: raising would need a host sync on every call.
    x = torch.randn(100_000, device="cuda")
    x[77_777] = bad
    assert torch.isnan(torch.ops.erbnn.two_sided_quantile(x, 0.5)).item()


@pytest.mark.cuda_agreement  # CPU vs CUDA on the same inputs (tools/gpu_check.sh)
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["randn", "ties", "all_negative", "zeros", "mostly_zeros", "wide"])
@pytest.mark.parametrize("n", [1, 2, 1000, 100_003, 3_000_001])
def test_cuda_matches_cpu(native, kind, n, dtype):
    x = torch.randn(n) if kind == "randn" else _case(kind, n, torch.float32)
    x = x.clamp(-6e4, 6e4).to(dtype)
    for p in ps():
        got = torch.ops.erbnn.two_sided_quantile(x.cuda(), p)
        assert got.device.type == "cuda"
        assert got.item() == torch.ops.erbnn.two_sided_quantile(x, p).item()


@pytest.mark.cuda
def test_cuda_above_2_pow_24_and_non_contiguous(native, big):
    x, expected = big
    xc = x.cuda()
    for p, e in expected.items():
        assert_within_ulp(torch.ops.erbnn.two_sided_quantile(xc, p).cpu(), e)
    check(torch.randn(400, 300, device="cuda").t()[::2], [0.7])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    if not ops.has_kernel("two_sided_quantile", device):
        pytest.fail(f"two_sided_quantile {device} kernel missing")
    for x in (torch.randn(5, 7, device=device), torch.randn(100, dtype=torch.float64, device=device)):
        torch.library.opcheck(torch.ops.erbnn.two_sided_quantile.default, (x, 0.8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("period", [4096, 4099, 65536])
def test_periodic_outliers(native, isa, dtype, period, monkeypatch):
    """The band select (forced on here) brackets large inputs from an evenly spaced sample: data whose
    every period-th value is an outlier (so that a strided sample may see only outliers) must still give
    the exact quantile."""
    monkeypatch.setenv("ERBNN_BAND_SELECT_MIN", "0")
    n = 1_000_000
    x = torch.randn(n)
    x[::period] = 100.0
    x[1::period] = -50.0
    check(x.to(dtype), [0.8, 0.5, 0.999, 0.0, 1.0])


@pytest.mark.parametrize("kind", ["skewed", "mirror", "close", "ties", "one_signed", "zeros"])
@pytest.mark.parametrize("p", [0.8, 0.5, 0.999, 0.0, 1.0])
def test_band_select_shared_band(native, isa, kind, p, monkeypatch):
    """The band select (forced on) scans with the band of the half whose sampled quantile is larger, for
    both halves: halves far apart (the other resolved below the band), mirror images and nearly equal
    halves (both in it, or the sample picking the wrong one: the fallback), ties, one-signed and mostly
    zero data all give the exact quantile."""
    monkeypatch.setenv("ERBNN_BAND_SELECT_MIN", "0")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(600_000, generator=g)
    if kind == "skewed":
        x = torch.where(x > 0, x * 5.0, x * 0.2)
    elif kind == "mirror":
        x = torch.cat([x[:300_000].abs(), -x[:300_000].abs()])
    elif kind == "close":
        x = torch.where(x > 0, x * 1.0005, x)
    elif kind == "ties":
        x = torch.randint(-5, 6, (600_000,), generator=g).float()
    elif kind == "one_signed":
        x = -x.abs() - 1.0
    else:
        x = torch.where(torch.rand(600_000, generator=g) < 0.95, torch.zeros(()), x)
    check(x, [p])
