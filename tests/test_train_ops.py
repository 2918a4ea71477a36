"""The training ops restore_weight_train / restore_activation_train: restoration + the adaptive
percentile q of the standardised values + the ring / width bookkeeping in one native call. Checked bit
for bit against an oracle written with the separate ops (restoration, PyTorch standardisation,
two_sided_quantile) and PyTorch's ring arithmetic."""
import pytest
import torch

from erbnn_ext import reference as R

from conftest import DEVICES

OPS = torch.ops.erbnn
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
MIN_WIDTH = 0.1


def acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def new_ring(size, device, count=0):
    values = torch.zeros(size, dtype=torch.float64, device=device)
    return values, torch.tensor(count, dtype=torch.int64, device=device)


def push(values, count, v):
    values[int(count) % values.numel()] = v
    count += 1


def ring_width(values, count):
    return (values.sum() / count.clamp(1, values.numel())).clamp_min(MIN_WIDTH)


def standardised(x, mean, scale):
    shape = [-1] + [1] * (x.dim() - 1) if mean.dim() == 1 else [1] * x.dim()
    return (x.to(acc(x.dtype)) - mean.view(shape)) / scale.clamp_min(1e-12).view(shape)


def oracle_weight(w, p, qv, qc, width):
    """Returns (outputs, q) and updates the state tensors in place."""
    w_b, mean, alpha = OPS.restore_weight(w)
    if w.numel() == 0:
        return (w_b, mean, alpha, width.to(acc(w.dtype))), None
    q = OPS.two_sided_quantile(standardised(w, mean, alpha), float(p))
    push(qv, qc, q.double())
    width.copy_(ring_width(qv, qc))
    return (w_b, mean, alpha, width.to(acc(w.dtype))), q


def oracle_activation(x, p, qv, qc, width, mv, mc, sv, sc):
    y, mean, sigma, rms = OPS.restore_activation(x)
    if x.numel() == 0:
        return (y, mean, sigma, rms, width.to(acc(x.dtype))), None
    q = OPS.two_sided_quantile(standardised(x, mean, sigma), float(p))
    push(qv, qc, q.double())
    width.copy_(ring_width(qv, qc))
    push(mv, mc, mean.double())
    push(sv, sc, sigma.double())
    return (y, mean, sigma, rms, width.to(acc(x.dtype))), q


def assert_same(got, expected):
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape and g.device == e.device
        assert torch.equal(g, e), (g, e)


def weight_state(device, size=3, count=0):
    qv, qc = new_ring(size, device, count)
    return [qv, qc, torch.tensor(0.25, dtype=torch.float64, device=device)]


def activation_state(device, size=3, stat_size=4):
    return weight_state(device, size) + [*new_ring(stat_size, device), *new_ring(stat_size, device)]


def clone_all(ts):
    return [t.clone() for t in ts]


def check_steps(op, oracle, new_state, inputs, device, p):
    """Runs op and its oracle over the steps `inputs`, each side with its own state; compares the
    outputs (b_step last), the rings and counts exactly and the width to float64 rounding."""
    st, st_ref = new_state(device), new_state(device)
    pt = torch.tensor(p, dtype=torch.float64, device=device)
    for x in inputs:
        got = op(x, pt, *st, MIN_WIDTH)
        expected, _ = oracle(x, p, *st_ref)
        assert_same(got[:-1], expected[:-1])
        for k, (a, b) in enumerate(zip(st, st_ref)):
            if k == 2:  # the width: a float64 mean
                torch.testing.assert_close(a, b, rtol=1e-15, atol=0)
            else:
                assert torch.equal(a, b), k
        torch.testing.assert_close(got[-1], expected[-1], rtol=1e-15, atol=0)
        assert got[-1].dtype == acc(x.dtype) and got[-1].dim() == 0


def check_weight_steps(ws, device, p=0.8, size=3):
    check_steps(OPS.restore_weight_train, oracle_weight, lambda d: weight_state(d, size), ws, device, p)


def check_activation_steps(xs, device, p=0.8, size=3):
    check_steps(OPS.restore_activation_train, oracle_activation, lambda d: activation_state(d, size), xs, device, p)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 33), (7,), (3, 1000, 3, 3)])
def test_weight_matches_oracle(native, isa, shape, dtype):
    # 5 steps over a ring of 3: the ring wraps.
    check_weight_steps([torch.randn(shape).to(dtype) for _ in range(5)], "cpu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 8, 6, 6), (3, 50), (1, 3, 70000), (5,)])
def test_activation_matches_oracle(native, isa, shape, dtype):
    check_activation_steps([(torch.randn(shape) * 2 + 0.5).to(dtype) for _ in range(5)], "cpu")


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 0.37])
def test_p_values(native, p):
    check_weight_steps([torch.randn(8, 4, 3, 3)], "cpu", p=p)
    check_activation_steps([torch.randn(2, 4, 5, 5)], "cpu", p=p)


def test_q_against_sorting_reference(native):
    """q lands in the ring exactly as the sorting reference computes it on the standardised values."""
    w = torch.randn(6, 4, 3, 3)
    st = weight_state("cpu", size=4)
    OPS.restore_weight_train(w, torch.tensor(0.8, dtype=torch.float64), *st, MIN_WIDTH)
    _, mean, alpha = OPS.restore_weight(w)
    assert st[0][0].item() == R.two_sided_quantile(standardised(w, mean, alpha), 0.8).item()
    assert st[1].item() == 1
    assert st[2].item() == max(st[0][0].item(), MIN_WIDTH)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_zeros_one_signed(native, isa, dtype):
    """Constant channels (alpha = 0: all-zero standardised values), integer data with many ties,
    one-signed inputs."""
    w = torch.randint(-2, 3, (6, 5, 3, 3)).to(dtype)
    w[1] = 3.0
    w[2] = torch.randint(0, 2, (5, 3, 3)).to(dtype)
    check_weight_steps([w, torch.full((4, 9), 2.0, dtype=dtype), w.abs()], "cpu")
    x = torch.randint(0, 3, (4, 3, 5, 5)).to(dtype)
    check_activation_steps([x, torch.full((2, 7), -1.5, dtype=dtype), -x], "cpu")


def test_non_contiguous(native, isa):
    w = torch.randn(9, 16, 3, 3).transpose(0, 1)
    x = torch.randn(4, 8, 6, 6).to(memory_format=torch.channels_last)
    xt = torch.randn(50, 6).t()
    check_weight_steps([w, w[:, ::2]], "cpu")
    check_activation_steps([x, xt], "cpu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_changes_no_state(native, device, dtype):
    st = weight_state(device, count=7)
    st[0].copy_(torch.tensor([0.5, 1.5, 2.5]))
    before = clone_all(st)
    p = torch.tensor(0.8, dtype=torch.float64, device=device)
    for w in (torch.empty(0, 3, 3, 3), torch.empty(4, 0)):
        w = w.to(device, dtype)
        got = OPS.restore_weight_train(w, p, *st, MIN_WIDTH)
        assert_same(got[:3], OPS.restore_weight(w))
        assert got[3].dtype == acc(dtype) and got[3].item() == 0.25
        assert all(torch.equal(a, b) for a, b in zip(st, before))
    st = activation_state(device)
    before = clone_all(st)
    for x in (torch.empty(0, 3, 4, 4), torch.empty(2, 0, 5)):
        x = x.to(device, dtype)
        got = OPS.restore_activation_train(x, p, *st, MIN_WIDTH)
        assert_same(got[:4], OPS.restore_activation(x))
        assert got[4].dtype == acc(dtype) and got[4].item() == 0.25
        assert all(torch.equal(a, b) for a, b in zip(st, before))


def test_width_floor_and_count_start(native):
    """The width is the mean of the filled slots, floored at min_width; a ring that starts part-way
    (a loaded count) keeps counting from there."""
    st = weight_state("cpu", size=4, count=6)
    st[0].copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    st_ref = clone_all(st)
    w = torch.randn(5, 20)
    got = OPS.restore_weight_train(w, torch.tensor(0.8, dtype=torch.float64), *st, 5.0)
    _, mean, alpha = OPS.restore_weight(w)
    q = OPS.two_sided_quantile(standardised(w, mean, alpha), 0.8).double()
    st_ref[0][2] = q
    assert torch.equal(st[0], st_ref[0]) and st[1].item() == 7
    assert st[2].item() == 5.0 and got[3].item() == 5.0


def test_bad_arguments(native):
    w = torch.randn(4, 9)
    p = torch.tensor(0.8, dtype=torch.float64)
    st = weight_state("cpu")
    before = clone_all(st)
    with pytest.raises(TypeError, match="q_values"):
        OPS.restore_weight_train(w, p, st[0].float(), st[1], st[2], MIN_WIDTH)
    with pytest.raises(TypeError, match="q_count"):
        OPS.restore_weight_train(w, p, st[0], st[1].double(), st[2], MIN_WIDTH)
    with pytest.raises(TypeError, match="width"):
        OPS.restore_weight_train(w, p, st[0], st[1], st[2].float(), MIN_WIDTH)
    with pytest.raises(ValueError, match="p must be in"):
        OPS.restore_weight_train(w, torch.tensor(1.5, dtype=torch.float64), *st, MIN_WIDTH)
    with pytest.raises(TypeError, match="w must be"):
        OPS.restore_weight_train(w.int(), p, *st, MIN_WIDTH)
    bad = w.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="w contains NaN"):
        OPS.restore_weight_train(bad, p, *st, MIN_WIDTH)
    x = torch.randn(3, 5)
    x[0, 0] = float("inf")
    ast = activation_state("cpu")
    abefore = clone_all(ast)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        OPS.restore_activation_train(x, p, *ast, MIN_WIDTH)
    with pytest.raises(TypeError, match="mean_values"):
        OPS.restore_activation_train(x.abs(), p, ast[0], ast[1], ast[2], ast[3].float(), *ast[4:], MIN_WIDTH)
    assert all(torch.equal(a, b) for a, b in zip(st, before))
    assert all(torch.equal(a, b) for a, b in zip(ast, abefore))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_oracle(native, dtype):
    check_weight_steps([torch.randn(16, 8, 3, 3, device="cuda").to(dtype) for _ in range(4)], "cuda")
    check_activation_steps([torch.randn(4, 8, 6, 6, device="cuda").to(dtype) for _ in range(4)], "cuda")
    w = torch.randint(-2, 3, (6, 5, 3, 3), device="cuda").to(dtype)
    w[1] = 3.0
    check_weight_steps([w, w.abs(), w.transpose(0, 1)], "cuda")
    check_activation_steps([torch.randint(0, 3, (4, 3, 5, 5), device="cuda").to(dtype)], "cuda")


@pytest.mark.cuda_agreement  # CPU vs CUDA on the same inputs (tools/gpu_check.sh)
@pytest.mark.cuda
def test_cuda_matches_cpu(native):
    """The CUDA ops give the CPU's q up to the statistics' last bits (their sums run in other orders)."""
    w = torch.randn(32, 16, 3, 3, dtype=torch.float64)
    for device in ("cpu", "cuda"):
        st = weight_state(device)
        OPS.restore_weight_train(w.to(device), torch.tensor(0.8, dtype=torch.float64, device=device), *st, MIN_WIDTH)
        if device == "cpu":
            q_cpu = st[0][0].item()
    assert st[0][0].item() == pytest.approx(q_cpu, rel=1e-6)


@pytest.mark.slow
def test_big_activation(native):
    """More than 2^24 elements (float32 counts would saturate): still bit-identical."""
    x = torch.randn(2, (1 << 24) // 2 + 12345, generator=torch.Generator().manual_seed(3))
    check_activation_steps([x], "cpu")


def test_bandwidth_benchmark_runs(native, capsys):
    """The bandwidth benchmark's command runs end to end (tiny tensors, one short timing each)."""
    from erbnn_ext.benchmarks import bandwidth

    rows = bandwidth.main(["--threads", "1", "--size-mb", "0.5", "--min-time", "0.01", "--only", "train", "quantile"])
    assert [r["name"] for r in rows] == ["copy_ (reference)", "clone (allocates its output)", "restore_weight_train",
                                         "restore_activation_train", "two_sided_quantile"]
    assert all(r["ms"] > 0 and r["fraction"] > 0 for r in rows)
    assert "of limit" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", ["ties", "zeros", "one_signed", "periodic"])
def test_large_special_data(native, isa, kind, dtype):
    """Large inputs of ties, mostly constant channels, one-signed data and periodic outliers: the first
    step by the radix select, the weights' second step (the same standardised values) by the previous q's
    band; each step equals the oracle."""
    w = torch.randn(256, 128, 3, 3)
    x = torch.randn(8, 16, 48, 48)
    if kind == "ties":
        w, x = torch.randint(-2, 3, w.shape).float(), torch.randint(-3, 4, x.shape).float()
    elif kind == "zeros":
        w[:250] = 1.5  # constant channels: standardised values exactly 0
        x = torch.where(torch.rand(x.shape) < 0.97, torch.zeros(()), x)
    elif kind == "one_signed":
        w, x = w.abs(), x.abs() + 3.0
    else:
        w.view(-1)[::4096] = 50.0
        x.view(-1)[::4096] = 80.0
    check_weight_steps([w.to(dtype), w.to(dtype) * 2], "cpu", p=0.9)
    check_activation_steps([x.to(dtype)], "cpu", p=0.9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "one_signed", "periodic", "skewed"])
def test_activation_sampled_band(native, isa, kind, dtype, monkeypatch):
    """Large activations take the sampled band (shared by both halves) in their write pass, from
    train_band_select_min() values (forced on here; 2^16 by default): special data equals the oracle too."""
    monkeypatch.setenv("ERBNN_TRAIN_BAND_SELECT_MIN", "0")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 16, 48, 48, generator=g)  # > 4 x 65536 values: the band select's sample
    if kind == "ties":
        x = torch.randint(-3, 4, x.shape, generator=g).float()
    elif kind == "zeros":
        x = torch.where(torch.rand(x.shape, generator=g) < 0.97, torch.zeros(()), x)
    elif kind == "one_signed":
        x = x.abs() + 3.0
    elif kind == "periodic":
        x.view(-1)[::4096] = 80.0
    elif kind == "skewed":
        x = torch.where(x > 0, x * 4.0, x * 0.3)
    for p in (0.9, 0.5, 0.0, 1.0):
        check_activation_steps([x.to(dtype)], "cpu", p=p)


# ---- the previous step's q as the quantile's hint (a band around it; a miss falls back to the radix
# select): the result must not depend on the hint.
def exact_q(x, per_channel, p):
    if per_channel:
        _, mean, scale = OPS.restore_weight(x)
    else:
        _, mean, scale, _ = OPS.restore_activation(x)
    return OPS.two_sided_quantile(standardised(x, mean, scale), p).item()


def check_with_hint(x, hint, per_channel, p=0.8):
    """One step with the ring's last q primed to `hint` (the hint the kernels read) against the oracle."""
    new_state = (lambda d: weight_state(d, 3)) if per_channel else (lambda d: activation_state(d, 3))
    op, oracle = (OPS.restore_weight_train, oracle_weight) if per_channel else \
        (OPS.restore_activation_train, oracle_activation)
    st, st_ref = new_state("cpu"), new_state("cpu")
    for s in (st, st_ref):
        s[0][1] = hint  # last pushed slot of a ring of 3 after 5 pushes: (5 - 1) % 3 = 1
        s[1].fill_(5)
    pt = torch.tensor(p, dtype=torch.float64)
    got = op(x, pt, *st, MIN_WIDTH)
    expected, q = oracle(x, p, *st_ref)
    assert_same(got[:-1], expected[:-1])
    assert st[0][2].item() == q.double().item()  # the new q, pushed into slot 5 % 3
    for a, b in zip(st, st_ref):  # (a NaN hint stays in the ring, and makes the width NaN on both sides)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


HINT_FACTORS = [1.0, 1.001, 0.999, 1.03, 0.97, 2.0, 0.5, 1e-6, 1e6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("factor", HINT_FACTORS)
def test_hint_never_changes_q(native, isa, per_channel, factor, dtype):
    """Hints in the band, at its edges and far outside (the fallback) give the oracle's q bit for bit."""
    x = (torch.randn(64, 32, 3, 3) if per_channel else torch.randn(8, 16, 20, 20) * 3 + 1).to(dtype)
    check_with_hint(x, exact_q(x, per_channel, 0.8) * factor, per_channel)


@pytest.mark.parametrize("hint", [0.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e-30, 1e30])
def test_unusable_hints_are_ignored(native, hint):
    check_with_hint(torch.randn(32, 8, 3, 3), hint, per_channel=True)
    check_with_hint(torch.randn(4, 8, 9, 9), hint, per_channel=False)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("kind", ["low_half_below_band", "low_half_in_band", "ties", "one_signed", "zeros"])
def test_hint_special_data(native, isa, per_channel, kind):
    """The two halves' quantiles far apart (one below the band while the other is in it: resolved without
    it; the lower one in the band and the higher above it: the fallback), ties at the quantile, one-signed
    data and mostly-zero data, each with the exact q as the hint and with hints off by 1% and 10%."""
    g = torch.Generator().manual_seed(3)
    shape = (96, 16, 3, 3) if per_channel else (6, 16, 24, 24)
    x = torch.randn(shape, generator=g)
    if kind in ("low_half_below_band", "low_half_in_band"):
        x = torch.where(x > 0, x * 3.0, x * 0.5)  # the positive half's quantile is the larger one
    elif kind == "ties":
        x = torch.randint(-3, 4, shape, generator=g).float()
    elif kind == "one_signed":
        x = x.abs() + 2.0
    else:
        x = torch.where(torch.rand(shape, generator=g) < 0.9, torch.zeros(()), x)
    q = exact_q(x, per_channel, 0.8)
    if kind == "low_half_in_band":  # the hint sits on the negative half's quantile, below the answer
        neg = standardised(x, *OPS.restore_weight(x)[1:]) if per_channel else \
            standardised(x, *OPS.restore_activation(x)[1:3])
        q = torch.quantile(neg[neg <= 0].abs().double(), 0.8).item()
    for factor in (1.0, 1.01, 0.99, 1.1, 0.9):
        check_with_hint(x, q * factor, per_channel)


@pytest.mark.parametrize("p", [0.0, 1.0, 0.5, 0.999])
@pytest.mark.parametrize("per_channel", [True, False])
def test_hint_at_extreme_percentiles(native, per_channel, p):
    """p = 0 and 1 select each half's extreme values (a rank at the band's edge or beyond it)."""
    x = torch.randn(48, 8, 3, 3) if per_channel else torch.randn(4, 8, 12, 12)
    q = exact_q(x, per_channel, p)
    for factor in (1.0, 1.01, 0.99, 0.5, 2.0):
        check_with_hint(x, q * factor, per_channel, p=p)


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@st.composite
def hinted_case(draw):
    """A tensor of a random size and value pattern, a percentile and a hint near or far from its q."""
    kind = draw(st.sampled_from(["normal", "ties", "zeros", "one_signed", "outliers", "skewed"]))
    per_channel = draw(st.booleans())
    rows, cols = draw(st.integers(1, 40)), draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    if kind == "ties":
        x = torch.randint(-4, 5, (rows, cols), generator=g).float()
    elif kind == "zeros":
        x = torch.where(torch.rand(rows, cols, generator=g) < 0.8, torch.zeros(()), x)
    elif kind == "one_signed":
        x = x.abs() + 1.0
    elif kind == "outliers":
        x[torch.rand(rows, cols, generator=g) < 0.01] = 1e4
    elif kind == "skewed":
        x = torch.where(x > 0, x * 4.0, x * 0.25)
    p = draw(st.sampled_from([0.0, 0.1, 0.5, 0.8, 0.95, 1.0]))
    factor = draw(st.sampled_from([1.0, 1.0001, 0.9999, 1.002, 0.998, 1.05, 0.95, 1.5, 0.3]))
    return x, per_channel, p, factor


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hinted_case())
def test_hint_property(native, case):
    """Any data, size, percentile and hint: the training ops' q and state equal the oracle's bit for bit."""
    x, per_channel, p, factor = case
    if not per_channel:
        x = x.reshape(x.shape[0], 1, -1)
    q = exact_q(x, per_channel, p)
    check_with_hint(x, q * factor, per_channel, p=p)


# ---- the activation op's histogram-bracketed band (from 2^16 values by default; ERBNN_TRAIN_BAND_SELECT_MIN
# forces it down to 4 x 2048 values): a sample of about n / 32 values in runs of 8 neighbours brackets the
# rank by a histogram of its keys; a miss falls back to the radix select. Exact either way.
def band_data(kind, shape, g):
    x = torch.randn(shape, generator=g) * 0.7 + 0.2
    n = x.numel()
    if kind == "relu":  # many exact zeros before standardising: one heavily tied standardised value
        x = x.clamp_min(0)
    elif kind == "ties":
        x = torch.randint(-3, 4, shape, generator=g).float()
    elif kind == "few_values":
        x = (x * 2).round() / 2
    elif kind == "exact_zeros":  # balanced +-1: the mean is exactly 0, so the zeros stay exact zeros
        v = torch.zeros(n)
        v[: n // 8], v[n // 8: n // 4] = 1.0, -1.0
        x = v[torch.randperm(n, generator=g)].reshape(shape)
    elif kind == "one_signed":
        x = x.abs() + 3.0
    elif kind == "skewed":
        x = torch.where(x > 0, x * 4.0, x * 0.3)
    elif kind == "smooth":  # neighbours correlated (the sample's runs see alike values)
        x = torch.nn.functional.avg_pool2d(torch.randn(shape[0], shape[1], shape[2] + 4, shape[3] + 4, generator=g),
                                           5, 1).clamp_min(0)
    return x


@pytest.mark.parametrize("shape", [(2, 4, 32, 32), (16, 64, 8, 8), (16, 32, 16, 16)])
@pytest.mark.parametrize("kind", ["normal", "relu", "ties", "few_values", "exact_zeros", "one_signed", "skewed",
                                  "smooth"])
def test_activation_histogram_band(native, isa, kind, shape, monkeypatch):
    """The histogram band (forced on from the smallest size it takes) on special data and percentiles,
    float32 (the fused AVX-512 scan) and float64 (the portable scan), equals the oracle."""
    monkeypatch.setenv("ERBNN_TRAIN_BAND_SELECT_MIN", "0")
    x = band_data(kind, shape, torch.Generator().manual_seed(11))
    for dtype in (torch.float32, torch.float64):
        for p in (0.8, 0.5, 0.1, 0.0, 0.999, 1.0):
            check_activation_steps([x.to(dtype)], "cpu", p=p)


def sample_runs(n, m, run=8):
    """The flat indices of band_select.h's sample of m values among n (BandSelect::run_start): run r in
    the r-th of m / run equal strides, at the offset floor(h / 2^32 * room), h the top 32 bits of the
    64-bit product r * 0x9E3779B97F4A7C15."""
    stride = n // (m // run)
    room = stride - run + 1
    starts = [r * stride + ((((r * 0x9E3779B97F4A7C15) % 2 ** 64) >> 32) * room >> 32) for r in range(m // run)]
    return torch.tensor([s + i for s in starts for i in range(run)])


def test_sample_runs_model_is_the_kernels(native, isa, monkeypatch):
    """sample_runs (above) is the kernel's sample, and the band hits on ordinary data: under
    ERBNN_BAND_SELECT_STRICT=1 (a miss raises instead of falling back) normal values pass, and outliers
    on exactly sample_runs' positions make the band miss. Runs at equal offsets of equal strides once
    followed the rows of feature maps and missed on almost every real activation."""
    monkeypatch.setenv("ERBNN_BAND_SELECT_STRICT", "1")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 64, 8, 8, generator=g)
    check_activation_steps([x], "cpu", p=0.8)  # the band holds the ranks: no error
    idx = sample_runs(x.numel(), 2048)
    assert idx.numel() == 2048 and idx.unique().numel() == 2048 and int(idx.max()) < x.numel()
    x.view(-1)[idx] = 100.0 + torch.rand(idx.numel(), generator=g)
    with pytest.raises(RuntimeError, match="band select missed"):
        check_activation_steps([x], "cpu", p=0.8)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("p", [0.8, 0.0, 0.5])
def test_activation_histogram_band_unrepresentative_sample(native, isa, sign, p):
    """Outliers exactly at the sample's positions (sample_runs below: band_select.h's run_start, 256 runs
    of 8 at 65536 values, the smallest sample of 2048): the band lies around the outliers, misses the
    ranks, and the radix select gives the exact q. Default bound (2^16): the path runs without forcing."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 64, 8, 8, generator=g)
    flat = x.view(-1)
    idx = sample_runs(flat.numel(), 2048)
    flat[idx] = sign * 100.0 + torch.randn(idx.numel(), generator=g)
    check_activation_steps([x], "cpu", p=p)
    check_activation_steps([-x], "cpu", p=p)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(8192, 70000), st.sampled_from([0.0, 0.1, 0.5, 0.8, 0.95, 1.0]),
       st.sampled_from(["normal", "relu", "ties", "skewed", "few_values"]), st.integers(0, 2**31 - 1))
def test_activation_histogram_band_property(native, monkeypatch, n, p, kind, seed):
    """Any size from the histogram band's smallest, percentile and data kind: q equals the oracle's."""
    monkeypatch.setenv("ERBNN_TRAIN_BAND_SELECT_MIN", "0")
    x = band_data(kind, (1, 1, 1, n), torch.Generator().manual_seed(seed)).reshape(1, n)
    check_activation_steps([x], "cpu", p=p)
