"""Chained deploy convs (issue 15): binary_conv2d_bits, where a conv reads its input as packed signs and its
epilogue writes the next binary layer's packed input, and deploy.freeze's chaining (incl. a 2x2 max-pool
run on the bits). The math is exact: bits and floats must equal the unchained path's bit for bit."""
import copy

import pytest
import torch
import torch.nn.functional as F

import erbnn_ext
from erbnn_ext import deploy, nn as enn, ops, reference as R

from conftest import DEVICES
from test_conv_engines import _reset_engine, engine  # noqa: F401  (fixtures: every CPU engine, forced)

# (n, c, o, k, s, p, h, w): the dense small-C layout (c < 64), word edges (63, 64, 65, 130 outputs), 1x1,
# stride 2, a row tile spanning image rows (w 5), borders.
CASES = [(2, 16, 16, 3, 1, 1, 9, 10), (1, 3, 70, 3, 2, 1, 7, 8), (2, 64, 64, 3, 1, 1, 8, 8),
         (1, 100, 130, 3, 1, 1, 6, 5), (2, 16, 32, 3, 2, 1, 8, 8), (3, 65, 63, 1, 1, 0, 5, 7),
         (1, 128, 65, 3, 1, 0, 5, 5)]
IDS = ["n{}c{}o{}k{}s{}p{}h{}w{}".format(*c) for c in CASES]


def _epilogue(o, residual_shape=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    kw = dict(out_scale=torch.rand(o, generator=g) + 0.5, out_bias=torch.randn(o, generator=g),
              ones_scale=torch.randn(o, generator=g),
              act=torch.stack([torch.randn(o, generator=g), torch.rand(o, generator=g), torch.randn(o, generator=g)]))
    if residual_shape is not None:
        kw["residual"] = torch.randn(residual_shape, generator=g)
    return kw


def _packed_signs(t, shift):
    """The reference layout of a packed activation: pack_signs of sign(t - shift) along the channels."""
    return R.pack_signs(torch.where(t >= shift, 1.0, -1.0), dim=1).contiguous()


def _check_case(case):
    n, c, o, k, s, p, h, w = case
    x, wt = torch.randn(n, c, h, w), torch.randn(o, c, k, k)
    wp = ops.pack_conv_weight(wt)
    shift, nxt = torch.tensor([0.1], dtype=torch.float64), torch.tensor([0.05])
    plain = ops.binary_conv2d_packed(x, wp, s, p, 1, x_shift=shift)
    kw = _epilogue(o, plain.shape)
    ref = ops.binary_conv2d_packed(x, wp, s, p, 1, x_shift=shift, **kw)
    ref_bits = _packed_signs(ref, 0.05)
    assert ref_bits.shape == (n, ref.shape[2], ref.shape[3], (o + 63) // 64)
    # float input, both outputs
    out, bits = ops.binary_conv2d_bits(x, wp, s, p, 1, x_shift=shift, next_shift=nxt, **kw)
    assert torch.equal(out, ref) and torch.equal(bits, ref_bits)
    # packed input: the same conv, with or without the floats
    xb = _packed_signs(x, 0.1)
    out2, bits2 = ops.binary_conv2d_bits(xb, wp, s, p, 1, in_channels=c, next_shift=nxt, **kw)
    assert torch.equal(out2, ref) and torch.equal(bits2, ref_bits)
    out3, bits3 = ops.binary_conv2d_bits(xb, wp, s, p, 1, in_channels=c, next_shift=nxt, float_out=False, **kw)
    assert out3.shape == (0,) and torch.equal(bits3, ref_bits)
    out4, bits4 = ops.binary_conv2d_bits(xb, wp, s, p, 1, in_channels=c, **kw)
    assert torch.equal(out4, ref) and bits4.shape == (0,) and bits4.dtype == torch.int64


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bits_equal_the_unchained_path(native, isa, case):
    _check_case(case)


@pytest.mark.parametrize("case", CASES[:4], ids=IDS[:4])
def test_bits_on_every_engine(engine, case):  # noqa: F811
    _check_case(case)


def test_bits_with_threads(native):
    # Several threads split a small batch over output channels: a task must own whole 64-channel words.
    prev = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        _check_case((1, 64, 200, 3, 1, 1, 4, 4))
        _check_case((1, 16, 130, 3, 1, 1, 3, 3))
    finally:
        torch.set_num_threads(prev)


def test_reference_twin(native):
    x, wt = torch.randn(2, 70, 6, 5), torch.randn(9, 70, 3, 3)
    wp = ops.pack_conv_weight(wt)
    kw = _epilogue(9, (2, 9, 6, 5))
    nxt = torch.tensor([0.2])
    xb = _packed_signs(x, 0.0)
    got = ops.binary_conv2d_bits(xb, wp, 1, 1, 1, in_channels=70, next_shift=nxt, **kw)
    with erbnn_ext.use_backend("reference"):
        want = ops.binary_conv2d_bits(xb, wp, 1, 1, 1, in_channels=70, next_shift=nxt, **kw)
        assert ops.binary_conv2d_bits(xb, wp, 1, 1, 1, in_channels=70, next_shift=nxt, float_out=False,
                                      **kw)[0].shape == (0,)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-4)
    # the bits compare the native floats; where the two floats agree, so do the bits
    assert torch.equal(got[1], _packed_signs(got[0], 0.2))
    if torch.equal(got[0], want[0]):
        assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("native_backend", [True, False], ids=["native", "reference"])
def test_bits_errors(native_backend, request):
    if native_backend:
        request.getfixturevalue("native")
    x, wt = torch.randn(1, 70, 5, 5), torch.randn(3, 70, 3, 3)
    wp = R.pack_conv_weight(wt)
    xb = _packed_signs(x, 0.0)
    run = lambda *a, **k: ops.binary_conv2d_bits(*a, native=native_backend, **k)
    with pytest.raises(ValueError, match="in_channels"):
        run(xb, wp, 1, 1, 1, in_channels=0)
    with pytest.raises(ValueError, match="x_shift"):
        run(xb, wp, 1, 1, 1, in_channels=70, x_shift=0.5)
    with pytest.raises(ValueError, match="in_channels|words"):
        run(xb, wp, 1, 1, 1, in_channels=130)  # 3 words expected, x has 2
    with pytest.raises(ValueError, match="float_out"):
        run(x, wp, 1, 1, 1, float_out=False)
    bad = xb.clone()
    bad[0, 0, 0, 1] |= 1 << 10  # channel 74 of 70
    with pytest.raises(ValueError, match="beyond"):
        run(bad, wp, 1, 1, 1, in_channels=70)
    with pytest.raises(ValueError, match="one value"):
        run(x, wp, 1, 1, 1, next_shift=torch.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        run(x, wp, 1, 1, 1, out_scale=torch.full((3,), float("nan")), next_shift=torch.zeros(1))
    # NaN floats without next_shift are just floats
    assert torch.isnan(run(x, wp, 1, 1, 1, out_scale=torch.full((3,), float("nan")))[0]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    assert ops.has_kernel("binary_conv2d_bits", device)
    x, wt = torch.randn(2, 70, 6, 5, device=device), torch.randn(4, 70, 3, 3, device=device)
    wp = ops.pack_conv_weight(wt)
    op = torch.ops.erbnn.binary_conv2d_bits.default
    vec = lambda n: torch.randn(n, device=device)
    shift = torch.tensor([0.1], device=device)
    torch.library.opcheck(op, (x, wp, [1, 1], [1, 1], [1, 1]))
    torch.library.opcheck(op, (x, wp, [1, 1], [1, 1], [1, 1], -1, vec(1), vec(4), vec(4), vec(1), None, None, shift))
    xb = ops.binary_conv2d_bits(x, ops.pack_conv_weight(torch.randn(70, 70, 1, 1, device=device)), 1, 0, 1,
                                next_shift=shift)[1]
    torch.library.opcheck(op, (xb, wp, [2, 1], [1, 0], [1, 1], 70, None, vec(4), None, None, None,
                               torch.randn(3, 4, device=device), shift, False))


# ------------------------------------------------------------------------------------------- deploy
@pytest.mark.parametrize("h,w", [(8, 8), (7, 9), (1, 5)])
def test_bitpool_is_maxpool_of_signs(h, w):
    x = torch.randn(2, 70, h, w)
    want = _packed_signs(F.max_pool2d(x, 2), 0.3) if h > 1 else None
    got = deploy._bitpool2x2(_packed_signs(x, 0.3))
    if want is None:
        assert got.shape[1] == 0
    else:
        assert torch.equal(got, want)


def _trained(name, steps=2):
    from erbnn_ext import models
    torch.manual_seed(0)
    model = getattr(models, name)(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    return model.eval()


def _convs(frozen):
    return [m for m in frozen.modules() if isinstance(m, deploy.FrozenBinaryConv2d)]


@pytest.mark.parametrize("name,chained", [("resnet20_1w1a", 17), ("resnet18_1w1a", 15)])
def test_chained_resnets_equal_unchained(native, name, chained):
    model = _trained(name)
    frozen, plain = deploy.freeze(model), deploy.freeze(model, chain=False)
    convs = _convs(frozen)
    # every binary conv but the last hands its successor the packed signs; the floats stay (residuals)
    assert sum(m.next_shift is not None for m in convs) == chained and all(m.float_out for m in convs)
    assert all(m.next_shift is None for m in _convs(plain))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(frozen(x), plain(x))
        with erbnn_ext.use_backend("reference"):
            expected = model(x)
    torch.testing.assert_close(frozen(x), expected, rtol=1e-3, atol=1e-3)


def test_chained_vgg_pools_on_bits(native):
    model = _trained("vgg_small_1w1a")
    frozen = deploy.freeze(model)
    convs = _convs(frozen)
    # BN + RPReLU behind the three max-pools move into the convs' epilogues; conv1..4 write bits only
    assert all(m.folded_bn and m.act is not None for m in convs)
    assert [m.float_out for m in convs] == [False, False, False, False, True]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = frozen(x)
        unchained = deploy.freeze(model, chain=False)(x)
        with erbnn_ext.use_backend("reference"):
            expected = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got, unchained, rtol=1e-4, atol=1e-4)


def test_chained_model_on_the_reference_backend(native):
    # The frozen model's ops dispatch per call: the pure-PyTorch twins run the same chained graph.
    model = _trained("vgg_small_1w1a", steps=1)
    frozen = deploy.freeze(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = frozen(x)
        with erbnn_ext.use_backend("reference"):
            ref = frozen(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_pool_fold_needs_monotone_tail(native):
    model = _trained("vgg_small_1w1a")
    with torch.no_grad():
        model.act1.prelu.weight[3] = -0.5  # a decreasing branch: RPReLU no longer commutes with the max
        model.bn3.weight[0] = -1.0         # BN scale < 0: neither does the BatchNorm
    frozen = deploy.freeze(model)
    convs = _convs(frozen)
    assert [m.folded_bn for m in convs] == [False, True, False, True, True]
    assert [m.next_shift is not None for m in convs] == [False, True, False, True, False]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with erbnn_ext.use_backend("reference"):
            expected = model(x)
        torch.testing.assert_close(frozen(x), expected, rtol=1e-3, atol=1e-3)


def test_chained_model_copies_and_moves(native):
    model = _trained("resnet20_1w1a", steps=1)
    frozen = deploy.freeze(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = frozen(x)
        twin = copy.deepcopy(frozen)  # the generated forward is rebound to the copy's modules
        twin.layer3[2].conv2.out_bias.add_(1.0)
        assert torch.equal(frozen(x), y) and not torch.equal(twin(x), y)
        assert torch.equal(frozen.to("cpu")(x), y)


def test_untraceable_model_stays_unchained(native):
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = enn.ERBinaryConv2d(8, 8, 3, padding=1)
            self.b = enn.ERBinaryConv2d(8, 8, 3, padding=1)

        def forward(self, x):
            y = self.a(x)
            if y.sum() > 0:  # data-dependent: torch.fx cannot trace it
                y = y + 1
            return self.b(y)

    model = Branchy()
    model(torch.randn(2, 8, 5, 5)).sum().backward()
    model.eval()
    with pytest.warns(UserWarning, match="could not trace"):
        frozen = deploy.freeze(model)
    assert all(m.next_shift is None for m in _convs(frozen))
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 16])
def test_deploy_rprelu_same_bits(channels):
    # freeze swaps the RPReLUs left outside the kernels (a float stem's) for torch's one-pass prelu form
    act = enn.RPReLU(channels)
    with torch.no_grad():
        act.prelu.weight.uniform_(-1, 1)
        act.shift_in.normal_()
        act.shift_out.normal_()
    frozen = deploy.freeze(torch.nn.Sequential(act))
    assert type(frozen[0]) is deploy._DeployRPReLU and type(act) is enn.RPReLU
    x = torch.randn(4, channels, 9, 9)
    x[0, 0, :3] = -act.shift_in.detach()[0]  # z == 0 exactly
    with torch.no_grad():
        assert torch.equal(frozen(x), act(x))
        assert torch.equal(frozen(x[:, :, 0, 0]), act(x[:, :, 0, 0]))
    with pytest.raises(ValueError, match="expects"):
        frozen(torch.randn(2, channels + 1, 3))


def test_forward_with_more_arguments_stays_unchained(native):
    # Tracing would keep only the default branch of `double`: such a model keeps its own forward.
    class TwoArgs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = enn.ERBinaryConv2d(8, 8, 3, padding=1)
            self.b = enn.ERBinaryConv2d(8, 8, 3, padding=1)

        def forward(self, x, double=False):
            y = self.b(self.a(x))
            return 2 * y if double else y

    model = TwoArgs()
    model(torch.randn(2, 8, 5, 5)).sum().backward()
    model.eval()
    with pytest.warns(UserWarning, match="could not trace"):  # the BatchNorm search (none here) cannot either
        frozen = deploy.freeze(model)
    assert all(m.next_shift is None for m in _convs(frozen))
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x, double=True), model(x, double=True), rtol=1e-4, atol=1e-4)
    # the same layers under a one-argument forward chain

    class OneArg(TwoArgs):
        def forward(self, x):
            return self.b(self.a(x))

    one = OneArg()
    one.load_state_dict(model.state_dict())
    one.eval()
    chained = deploy.freeze(one)
    assert sum(m.next_shift is not None for m in _convs(chained)) == 1
    with torch.no_grad():
        assert torch.equal(chained(x), frozen(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ["resnet20_1w1a", "vgg_small_1w1a"])
def test_chained_model_keeps_the_model_dtype(native, name, dtype):
    """A frozen float64 / bfloat16 model runs chained: the convs fed packed signs return the model's dtype
    (the BatchNorms and convs after them are in it). float64 equals the unchained freeze (the kernels
    work in float32 either way; VGG to its BatchNorm folding's rounding); in bfloat16 the unchained freeze rounds each conv output to bfloat16
    before the next layer takes its sign, the chained one signs the float32 value, so values near the
    next layer's mu may take other signs: only dtype and finiteness are checked there."""
    model = _trained(name, steps=1).to(dtype)
    frozen, plain = deploy.freeze(model), deploy.freeze(model, chain=False)
    assert any(m.next_shift is not None for m in _convs(frozen))
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        out = frozen(x)
        assert out.dtype == dtype and torch.isfinite(out).all()
        if dtype == torch.float64 and name.startswith("resnet"):
            assert torch.equal(out, plain(x))
        elif dtype == torch.float64:  # VGG's BatchNorms behind the bit pools fold into the epilogue
            torch.testing.assert_close(out, plain(x), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------- CUDA
def _bits_on(dev, case, seed=1):
    """binary_conv2d_bits of `case` on `dev`, float and packed input: (out, bits as 64-bit words, out from
    the packed input), on the CPU."""
    n, c, o, k, s, p, h, w = case
    g = torch.Generator().manual_seed(seed)
    x, wt = torch.randn(n, c, h, w, generator=g), torch.randn(o, c, k, k, generator=g)
    shift, nxt = torch.tensor([0.1], dtype=torch.float64), torch.tensor([0.05])
    out_shape = ops.binary_conv2d_packed(x, ops.pack_conv_weight(wt), s, p, 1, x_shift=shift).shape
    kw = {key: v.to(dev) for key, v in _epilogue(o, out_shape, seed).items()}
    wp = ops.pack_conv_weight(wt.to(dev))
    out, bits = ops.binary_conv2d_bits(x.to(dev), wp, s, p, 1, x_shift=shift.to(dev), next_shift=nxt.to(dev), **kw)
    xb = deploy.repack_words(_packed_signs(x, 0.1), c, deploy.word_bits(torch.device(dev))).to(dev)
    out_b, _ = ops.binary_conv2d_bits(xb, wp, s, p, 1, in_channels=c, next_shift=nxt.to(dev), **kw)
    return out.cpu(), deploy.repack_words(bits.cpu(), o, 64), out_b.cpu()


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bits_cuda_matches_cpu(case):
    """On CUDA: the packed output is exactly the signs of the float output against next_shift, the packed
    input gives the float input's result bit for bit, and the floats equal the CPU kernel's to rounding
    (the epilogue's float arithmetic may contract differently)."""
    out, bits, out_b = _bits_on("cuda", case)
    assert torch.equal(bits, _packed_signs(out, 0.05)) and torch.equal(out_b, out)
    torch.testing.assert_close(out, _bits_on("cpu", case)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["resnet20_1w1a", "vgg_small_1w1a"])
def test_chained_model_on_cuda(name):
    model = _trained(name, steps=1).cuda()
    frozen, plain = deploy.freeze(model), deploy.freeze(model, chain=False)
    assert any(m.next_shift is not None for m in _convs(frozen))
    x = torch.randn(3, 3, 32, 32, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), plain(x), rtol=1e-3, atol=1e-3)


def test_frozen_layers_read_their_buffers_as_they_are_now(native):
    # the forward reads the buffer dict on every call: a buffer assigned after freezing is the one used
    model = _trained("resnet20_1w1a", steps=1)
    frozen = deploy.freeze(model)
    x = torch.randn(2, 3, 32, 32)
    conv = _convs(frozen)[-1]
    with torch.no_grad():
        before, bias = frozen(x), conv.out_bias
        conv.out_bias = bias + 1.0
        after = frozen(x)
        conv.out_bias = bias
        assert not torch.equal(after, before)
        assert torch.equal(frozen(x), before)
