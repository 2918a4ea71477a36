import random

import pytest
import torch
import torch.nn.functional as F

from erbnn_ext import binary_ops, functional as EF, ops, reference as R

from conftest import DEVICES

CHANNELS = [1, 3, 31, 32, 33, 63, 64, 65, 127, 129, 256]


def conv_truth(x, w, stride, padding, dilation):
    return F.conv2d(R.sign(x.double()), R.sign(w.double()), stride=stride, padding=padding,
                    dilation=dilation).float()


def sample_grid(n, seed):
    """n random conv configurations (fixed seed) covering the grid of the binary-kernel spec."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        c, k = rng.choice(CHANNELS), rng.choice([1, 3, 5])
        s, p, d = rng.choice([1, 2]), rng.choice([0, 1, 2]), rng.choice([1, 2])
        h, w = rng.randint(1, 12), rng.randint(1, 12)
        if h + 2 * p < d * (k - 1) + 1 or w + 2 * p < d * (k - 1) + 1:
            continue
        out.append(dict(n=rng.choice([1, 2, 3]), c=c, o=rng.choice([1, 5, 8, 17]), k=k, s=s, p=p, d=d, h=h, w=w))
    return out


# The same configurations for every ISA; every channel count appears at least once.
GRID = sample_grid(44, seed=1) + [dict(n=1, c=c, o=9, k=3, s=1, p=1, d=1, h=5, w=6) for c in CHANNELS]


@pytest.mark.parametrize("cfg", GRID, ids=lambda c: "n{n}c{c}o{o}k{k}s{s}p{p}d{d}h{h}w{w}".format(**c))
def test_conv_grid_exact(native, isa, cfg):
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"])
    w = torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"])
    args = (cfg["s"], cfg["p"], cfg["d"])
    y = EF.binary_conv2d(x, w, *args)
    assert y.dtype == torch.float32
    assert torch.equal(y, conv_truth(x, w, *args))


@pytest.mark.parametrize("shape", [(1, 64, 1, 1), (2, 65, 3, 3), (3, 128, 5, 4)])
def test_conv_one_by_one_output_and_rectangular(native, isa, shape):
    x = torch.randn(shape)
    w = torch.randn(16, shape[1], 3, 2)
    for p in ((0, 0), (1, 0), (0, 1)):
        if shape[2] + 2 * p[0] < 3 or shape[3] + 2 * p[1] < 2:
            continue
        assert torch.equal(EF.binary_conv2d(x, w, (2, 1), p, (1, 1)), conv_truth(x, w, (2, 1), p, (1, 1)))


def test_conv_resnet_shapes_all_tiles(native, isa):
    # Many pixel tiles and output-channel blocks: interior, border, row-straddling tiles and tails.
    for c, o, hw, s in [(64, 64, 17, 1), (128, 72, 16, 2), (256, 20, 8, 1)]:
        x, w = torch.randn(2, c, hw, hw), torch.randn(o, c, 3, 3)
        assert torch.equal(EF.binary_conv2d(x, w, s, 1), conv_truth(x, w, s, 1, 1))


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_conv_layouts(native, isa, layout):
    x, w = torch.randn(2, 70, 9, 8), torch.randn(6, 70, 3, 3)
    if layout == "channels_last":
        xv, wv = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        xv, wv = x.transpose(2, 3).contiguous().transpose(2, 3), w.transpose(0, 1).contiguous().transpose(0, 1)
    else:
        big = torch.randn(4, 140, 9, 16)
        big[::2, ::2, :, ::2] = x
        xv, wv = big[::2, ::2, :, ::2], w
    assert not xv.is_contiguous()
    assert torch.equal(EF.binary_conv2d(xv, wv, 1, 1), conv_truth(x, w, 1, 1, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_conv_dtypes(native, dtype):
    x, w = torch.randn(2, 33, 6, 6).to(dtype), torch.randn(4, 33, 3, 3).to(dtype)
    assert torch.equal(EF.binary_conv2d(x, w, 1, 1), conv_truth(x, w, 1, 1, 1))


def test_conv_empty(native, isa):
    y = EF.binary_conv2d(torch.randn(0, 5, 6, 6), torch.randn(4, 5, 3, 3), 1, 1)
    assert y.shape == (0, 4, 6, 6)
    y = EF.binary_conv2d(torch.randn(2, 5, 6, 6), torch.randn(0, 5, 3, 3), 1, 1)
    assert y.shape == (2, 0, 6, 6)


def test_conv_errors(native):
    x, w = torch.randn(1, 4, 5, 5), torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="NaN"):
        EF.binary_conv2d(x.index_put((torch.tensor([0]),) * 4, torch.tensor(float("nan"))), w)
    with pytest.raises(ValueError, match="NaN"):
        EF.binary_conv2d(x, w.index_put((torch.tensor([1]),) * 4, torch.tensor(float("nan"))))
    with pytest.raises(TypeError, match="float"):
        EF.binary_conv2d(x.int(), w)
    with pytest.raises(ValueError, match="4-D"):
        EF.binary_conv2d(x[0], w)
    with pytest.raises(ValueError, match="channels"):
        EF.binary_conv2d(x, torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="larger than the padded input"):
        EF.binary_conv2d(torch.randn(1, 4, 2, 2), w)
    with pytest.raises(ValueError, match="stride"):
        torch.ops.erbnn.binary_conv2d(x, w, [0, 1], [0, 0], [1, 1])


@pytest.mark.parametrize("k", [1, 3, 31, 63, 64, 65, 127, 129, 200, 513])
def test_linear_exact(native, isa, k):
    x, w = torch.randn(2, 9, k), torch.randn(19, k)
    y = EF.binary_linear(x, w)
    assert y.shape == (2, 9, 19) and y.dtype == torch.float32
    assert torch.equal(y, (R.sign(x.double()) @ R.sign(w.double()).t()).float())
    assert torch.equal(EF.binary_linear(x[0].t().contiguous().t(), w), y[0])  # non-contiguous x


def test_linear_edges(native):
    assert EF.binary_linear(torch.randn(0, 5), torch.randn(3, 5)).shape == (0, 3)
    assert torch.equal(EF.binary_linear(torch.randn(4, 0), torch.randn(3, 0)), torch.zeros(4, 3))
    x, w = torch.randn(70), torch.randn(3, 70)
    assert EF.binary_linear(x, w).shape == (3,)
    assert torch.equal(EF.binary_linear(x, w), R.binary_linear(x, w))
    with pytest.raises(ValueError, match="K"):
        EF.binary_linear(torch.randn(2, 5), torch.randn(3, 6))
    with pytest.raises(ValueError, match="NaN"):
        EF.binary_linear(torch.tensor([[float("nan")]]), torch.randn(3, 1))
    with pytest.raises(TypeError, match="float"):
        EF.binary_linear(torch.ones(2, 5, dtype=torch.int64), torch.randn(3, 5))


# ---------------------------------------------------------------------- packed weights + fused epilogue
def fused_truth(x, w, stride, padding, dilation, shift, scale, bias, ones):
    """The ERBinaryConv2d eval math in float64: scale*conv(sign(x - shift), W_b) + bias + ones*conv(1, W_b)."""
    wb = R.sign(w.double())
    xb = torch.where(x.double() >= shift, 1.0, -1.0).double()
    conv = F.conv2d(xb, wb, stride=stride, padding=padding, dilation=dilation)
    one = F.conv2d(torch.ones_like(xb[:1]), wb, stride=stride, padding=padding, dilation=dilation)
    v = lambda t: t.double().reshape(1, -1, 1, 1)
    return v(scale) * conv + v(bias) + v(ones) * one


@pytest.mark.parametrize("cfg", GRID[:24], ids=lambda c: "c{c}o{o}k{k}s{s}p{p}d{d}h{h}w{w}".format(**c))
def test_packed_fused_epilogue(native, isa, cfg):
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"]) + 0.3
    w = torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"])
    args = (cfg["s"], cfg["p"], cfg["d"])
    wp = binary_ops.pack_conv_weight(w)
    # no epilogue: exactly the conv of sign(x - shift)
    plain = binary_ops.binary_conv2d_packed(x, wp, *args, x_shift=0.3)
    xs = torch.where(x >= 0.3, 1.0, -1.0)
    assert torch.equal(plain, conv_truth(xs, w, *args))
    scale, bias, ones = torch.rand(cfg["o"]) + 0.5, torch.randn(cfg["o"]), torch.randn(cfg["o"])
    y = binary_ops.binary_conv2d_packed(x, wp, *args, x_shift=0.3, out_scale=scale, out_bias=bias, ones_scale=ones)
    truth = fused_truth(x, w, *args, 0.3, scale, bias, ones)
    torch.testing.assert_close(y.double(), truth, rtol=1e-6, atol=1e-4)
    ref = R.binary_conv2d_packed(x, wp, *args, torch.tensor(0.3, dtype=torch.float64), scale, bias, ones)
    assert torch.equal(y, ref) or torch.allclose(y, ref, rtol=1e-6, atol=1e-4)


def test_fused_equals_conv_of_restored_activation(native, isa):
    # sigma * conv(sign(x - mu), W_b) + mu * conv(1, W_b) == conv(restore_activation_fixed(x), W_b), zero padding.
    x, w = torch.randn(2, 40, 7, 9), torch.randn(12, 40, 3, 3)
    mu, sigma = 0.25, 0.8
    wb = R.sign(w)
    y_ref = F.conv2d(R.restore_activation_fixed(x, mu, sigma), wb, padding=1)
    wp = binary_ops.pack_conv_weight(w)
    y = binary_ops.binary_conv2d_packed(x, wp, 1, 1, x_shift=mu, out_scale=torch.tensor(sigma),
                                        ones_scale=torch.tensor(mu))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-4)
    # a following BatchNorm folds into per-channel scale / bias / ones
    a, c = torch.rand(12) + 0.5, torch.randn(12)
    y_bn = binary_ops.binary_conv2d_packed(x, wp, 1, 1, x_shift=mu, out_scale=a * sigma, out_bias=c, ones_scale=a * mu)
    torch.testing.assert_close(y_bn, a.view(1, -1, 1, 1) * y_ref + c.view(1, -1, 1, 1), rtol=1e-5, atol=1e-4)


def test_packed_errors(native):
    x, w = torch.randn(1, 70, 5, 5), torch.randn(3, 70, 3, 3)
    wp = binary_ops.pack_conv_weight(w)
    with pytest.raises(ValueError, match="words"):
        binary_ops.binary_conv2d_packed(torch.randn(1, 130, 5, 5), wp)
    with pytest.raises(TypeError, match="int64"):
        binary_ops.binary_conv2d_packed(x, wp.int())
    with pytest.raises(ValueError, match="out_scale"):
        binary_ops.binary_conv2d_packed(x, wp, out_scale=torch.ones(2))
    with pytest.raises(ValueError, match="x_shift"):
        binary_ops.binary_conv2d_packed(x, wp, x_shift=float("inf"))
    with pytest.raises(ValueError, match="NaN"):
        binary_ops.binary_conv2d_packed(torch.full((1, 70, 5, 5), float("nan")), wp)
    assert binary_ops.binary_conv2d_packed(torch.randn(0, 70, 5, 5), wp, padding=1).shape == (0, 3, 5, 5)


def test_packed_x_shift_tensor_and_dtype(native):
    # x_shift is None (0) or a 1-element float tensor on x's device; the output is float32 for every
    # input dtype (callers cast).
    x, w = torch.randn(2, 5, 6, 6, dtype=torch.float64), torch.randn(4, 5, 3, 3)
    wp = binary_ops.pack_conv_weight(w)
    op = torch.ops.erbnn.binary_conv2d_packed.default
    truth = conv_truth(x - 0.25, w, 1, 1, 1)
    for shift in (torch.tensor(0.25), torch.tensor([0.25], dtype=torch.float64), torch.tensor([[0.25]])):
        y = op(x, wp, [1, 1], [1, 1], [1, 1], shift)
        assert y.dtype == torch.float32 and torch.equal(y, truth)
        assert torch.equal(R.binary_conv2d_packed(x, wp, [1, 1], [1, 1], [1, 1], shift), truth)
    assert torch.equal(op(x, wp, [1, 1], [1, 1], [1, 1], None), conv_truth(x, w, 1, 1, 1))
    for fn in (op, R.binary_conv2d_packed):
        with pytest.raises(ValueError, match="x_shift"):
            fn(x, wp, [1, 1], [1, 1], [1, 1], torch.zeros(2))
        with pytest.raises(TypeError, match="x_shift"):
            fn(x, wp, [1, 1], [1, 1], [1, 1], torch.zeros(1, dtype=torch.int64))
        with pytest.raises(ValueError, match="x_shift"):
            fn(x, wp, [1, 1], [1, 1], [1, 1], torch.tensor([float("nan")]))
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        assert op(x.to(dt), wp, [1, 1], [1, 1], [1, 1], torch.tensor(0.25)).dtype == torch.float32


def test_packed_compiles_fullgraph_with_tensor_shift(native):
    # The shift as a tensor keeps the graph whole: no SymFloat argument, no .item() in the caller.
    x, w = torch.randn(1, 5, 6, 6), torch.randn(4, 5, 3, 3)
    wp, shift, scale = binary_ops.pack_conv_weight(w), torch.tensor([0.1]), torch.rand(4)
    fn = lambda x, s: ops.binary_conv2d_packed(x, wp, (1, 1), (1, 1), (1, 1), x_shift=s, out_scale=scale) * 2
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x, shift), fn(x, shift))
    assert torch.equal(compiled(x, shift + 0.5), fn(x, shift + 0.5))


# --------------------------------------------------------------------------------------------- devices
@pytest.mark.cuda_agreement  # CPU vs CUDA on the same inputs (tools/gpu_check.sh)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", GRID[::4], ids=lambda c: "c{c}o{o}k{k}s{s}p{p}d{d}h{h}w{w}".format(**c))
def test_conv_devices(native, device, cfg):
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"], device=device)
    w = torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"], device=device)
    args = (cfg["s"], cfg["p"], cfg["d"])
    assert torch.equal(EF.binary_conv2d(x, w, *args).cpu(), conv_truth(x.cpu(), w.cpu(), *args))
    wp = ops.pack_conv_weight(w)
    scale, bias, ones = (torch.randn(cfg["o"], device=device) for _ in range(3))
    y = binary_ops.binary_conv2d_packed(x, wp, *args, x_shift=0.1, out_scale=scale, out_bias=bias, ones_scale=ones)
    truth = fused_truth(x.cpu(), w.cpu(), *args, 0.1, scale.cpu(), bias.cpu(), ones.cpu())
    torch.testing.assert_close(y.cpu().double(), truth, rtol=1e-6, atol=1e-4)


@pytest.mark.cuda_agreement  # CPU vs CUDA on the same inputs (tools/gpu_check.sh)
@pytest.mark.parametrize("device", DEVICES)
def test_linear_devices(native, device):
    x, w = torch.randn(37, 129, device=device), torch.randn(21, 129, device=device)
    assert torch.equal(EF.binary_linear(x, w).cpu(), (R.sign(x.cpu()) @ R.sign(w.cpu()).t()))


@pytest.mark.cuda_agreement  # CPU vs CUDA on the same inputs (tools/gpu_check.sh)
@pytest.mark.cuda
@pytest.mark.parametrize("mma", ["1", "0"])  # b1 tensor-core kernel (sm_80+) and the __popc kernel
def test_cuda_both_kernels(native, monkeypatch, mma):
    monkeypatch.setenv("ERBNN_CUDA_MMA", mma)
    for cfg in GRID[::3]:
        x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"], device="cuda")
        w = torch.randn(cfg["o"] * 5, cfg["c"], cfg["k"], cfg["k"], device="cuda")
        args = (cfg["s"], cfg["p"], cfg["d"])
        assert torch.equal(EF.binary_conv2d(x, w, *args).cpu(), conv_truth(x.cpu(), w.cpu(), *args)), cfg
    x, w = torch.randn(3, 300, 17, 13, device="cuda"), torch.randn(70, 300, 3, 3, device="cuda")
    assert torch.equal(EF.binary_conv2d(x, w, 1, 1).cpu(), conv_truth(x.cpu(), w.cpu(), 1, 1, 1))


@pytest.mark.cuda
def test_cuda_nan_gives_nan_without_sync(native):
    x = torch.randn(1, 5, 4, 4, device="cuda")
    x[0, 1, 2, 2] = float("nan")
    assert torch.isnan(EF.binary_conv2d(x, torch.randn(2, 5, 3, 3, device="cuda"), 1, 1)).all()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for name in ("binary_conv2d", "binary_linear", "binary_conv2d_packed"):
        assert ops.has_kernel(name, device), name
    x, w = torch.randn(2, 70, 6, 5, device=device), torch.randn(4, 70, 3, 3, device=device)
    torch.library.opcheck(torch.ops.erbnn.binary_conv2d.default, (x, w, [2, 1], [1, 0], [1, 2]))
    torch.library.opcheck(torch.ops.erbnn.binary_linear.default,
                          (torch.randn(3, 5, 70, device=device), torch.randn(6, 70, device=device)))
    wp = R.pack_conv_weight(w)
    op = torch.ops.erbnn.binary_conv2d_packed.default
    torch.library.opcheck(op, (x, wp, [1, 1], [1, 1], [1, 1]))
    vec = lambda n: torch.randn(n, device=device)
    torch.library.opcheck(op, (x, wp, [1, 1], [1, 1], [1, 1], vec(1), vec(4), vec(4), vec(1)))


@pytest.mark.cuda
def test_cuda_tail_bits_give_nan_without_sync(native):
    x, w = torch.randn(1, 40, 5, 5, device="cuda"), torch.randn(3, 40, 3, 3, device="cuda")
    wp = ops.pack_conv_weight(w)
    assert not torch.isnan(ops.binary_conv2d_packed(x, wp, (1, 1), (1, 1), (1, 1))).any()
    wp[1, 0, 0, 1] |= 1 << 20  # channel 52 of a 40-channel weight
    assert torch.isnan(ops.binary_conv2d_packed(x, wp, (1, 1), (1, 1), (1, 1))).all()


# --------------------------------------------------- few channels (dense layout) and the fused tail
def _small_c_grid():
    out = []
    for c in (1, 3, 5, 16, 24, 40):
        for k in (1, 3, 5):
            for s, p, d in ((1, k // 2, 1), (2, k // 2, 1), (1, k - 1, 2), (2, 0, 1)):
                out.append(dict(n=2, c=c, o=9, k=k, s=s, p=p, d=d, h=11, w=10))
    return out


@pytest.mark.parametrize("cfg", _small_c_grid(), ids=lambda c: "c{c}k{k}s{s}p{p}d{d}".format(**c))
def test_small_channels_exact(native, isa, cfg):
    # C < 64: the XNOR engine packs the whole reduction (kh*kw*C bits contiguous); exact, zero padding
    # and the conv(1, W_b) border correction included.
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"]) + 0.2
    w = torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"])
    args = (cfg["s"], cfg["p"], cfg["d"])
    assert torch.equal(EF.binary_conv2d(x, w, *args), conv_truth(x, w, *args))
    wp = binary_ops.pack_conv_weight(w)
    scale, bias, ones = torch.rand(cfg["o"]) + 0.5, torch.randn(cfg["o"]), torch.randn(cfg["o"])
    y = binary_ops.binary_conv2d_packed(x, wp, *args, x_shift=0.2, out_scale=scale, out_bias=bias, ones_scale=ones)
    torch.testing.assert_close(y.double(), fused_truth(x, w, *args, 0.2, scale, bias, ones), rtol=1e-6, atol=1e-4)


def _tail_truth(y, residual, act):
    v = y.double() + residual.double()
    b1, slope, b2 = (t.double().view(1, -1, 1, 1) for t in act)
    t = v + b1
    return torch.where(t >= 0, t, slope * t) + b2


@pytest.mark.parametrize("cfg", GRID[::5], ids=lambda c: "c{c}o{o}k{k}s{s}p{p}d{d}h{h}w{w}".format(**c))
def test_packed_fused_tail(native, isa, cfg):
    # + residual, then RPReLU, in the conv's epilogue (deploy.freeze's block tail).
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"])
    w = torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"])
    args = (cfg["s"], cfg["p"], cfg["d"])
    wp = binary_ops.pack_conv_weight(w)
    kw = dict(x_shift=0.1, out_scale=torch.rand(cfg["o"]) + 0.5, out_bias=torch.randn(cfg["o"]),
              ones_scale=torch.randn(cfg["o"]))
    plain = binary_ops.binary_conv2d_packed(x, wp, *args, **kw)
    residual = torch.randn_like(plain)
    act = torch.stack([torch.randn(cfg["o"]), torch.rand(cfg["o"]), torch.randn(cfg["o"])])
    pair = lambda v: [v, v]
    y = ops.binary_conv2d_packed(x, wp, pair(args[0]), pair(args[1]), pair(args[2]), residual=residual, act=act, **kw)
    torch.testing.assert_close(y.double(), _tail_truth(plain, residual, act), rtol=1e-6, atol=1e-5)
    ref = R.binary_conv2d_packed(x, wp, pair(args[0]), pair(args[1]), pair(args[2]),
                                 torch.tensor(0.1, dtype=torch.float64), kw["out_scale"], kw["out_bias"],
                                 kw["ones_scale"], residual, act)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    only_act = ops.binary_conv2d_packed(x, wp, pair(args[0]), pair(args[1]), pair(args[2]), act=act[:, :1], **kw)
    torch.testing.assert_close(only_act.double(), _tail_truth(plain, torch.zeros_like(plain), act[:, :1].expand(3, cfg["o"])),
                               rtol=1e-6, atol=1e-5)


def test_packed_fused_tail_errors(native):
    x, w = torch.randn(1, 8, 5, 5), torch.randn(3, 8, 3, 3)
    wp = binary_ops.pack_conv_weight(w)
    op = torch.ops.erbnn.binary_conv2d_packed.default
    with pytest.raises(ValueError, match="residual"):
        op(x, wp, [1, 1], [1, 1], [1, 1], None, None, None, None, torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="act"):
        op(x, wp, [1, 1], [1, 1], [1, 1], None, None, None, None, None, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="residual"):
        op(x, wp, [1, 1], [1, 1], [1, 1], None, None, None, None, torch.zeros(1, 3, 5, 5, dtype=torch.int32))
