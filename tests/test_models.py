import math

import pytest
import torch
import torch.nn.functional as F

from erbnn_ext import baselines, reference as R
import erbnn_ext
from erbnn_ext import deploy
from erbnn_ext.models import (ALIASES, METHODS, MODELS, build_model, model_name, resnet18_1w1a, resnet18_1w1a_imagenet,
                              resnet20_1w1a, vgg_small_1w1a)
from erbnn_ext.models.resnet20 import OptionAShortcut
from erbnn_ext.nn import ApproxSign, ERBinaryConv2d, RPReLU, set_epoch
from erbnn_ext.nn.ablations import (BINARY_CONVS, ClipSign, EDESign, ERClipConv2d, EREDEConv2d, IRNetConv2d,
                                    ReCUActSign, ReCUConv2d)


def _binary(model):
    return [m for m in model.modules() if isinstance(m, tuple(set(BINARY_CONVS.values())))]


def _plain(model, cls):
    return [m for m in model.modules() if type(m) is cls]


def test_resnet20_structure():
    m = resnet20_1w1a(num_classes=7)
    assert m(torch.randn(3, 3, 32, 32)).shape == (3, 7)
    b = _binary(m)
    assert len(b) == 18 and all(type(c) is ERBinaryConv2d for c in b)
    assert [c.out_channels for c in b] == [16] * 6 + [32] * 6 + [64] * 6
    assert [c.stride for c in b if c.stride != (1, 1)] == [(2, 2), (2, 2)]
    assert _plain(m, torch.nn.Conv2d) == [m.conv1] and m.conv1.in_channels == 3
    assert isinstance(m.bn2, torch.nn.BatchNorm1d) and m.bn2.num_features == 64
    assert type(m.linear) is torch.nn.Linear and m.linear.in_features == 64
    shortcuts = [blk.shortcut for layer in (m.layer1, m.layer2, m.layer3) for blk in layer]
    assert sum(isinstance(s, OptionAShortcut) for s in shortcuts) == 2
    assert all(not list(s.parameters()) for s in shortcuts)  # option A has no parameters
    assert len([r for r in m.modules() if isinstance(r, RPReLU)]) == 1 + 2 * 9  # stem + two per block


def test_option_a_shortcut():
    x = torch.randn(2, 16, 8, 8)
    y = OptionAShortcut(16, 32)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any() and not y[:, 24:].any()


def test_resnet18_structure():
    m = resnet18_1w1a()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    b = _binary(m)
    assert len(b) == 16 and [c.out_channels for c in b] == [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4
    fp = _plain(m, torch.nn.Conv2d)
    assert fp[0] is m.conv1 and [c.kernel_size for c in fp[1:]] == [(1, 1)] * 3  # FP 1x1 shortcuts
    for layer in (m.layer2, m.layer3, m.layer4):
        sc = layer[0].shortcut
        assert isinstance(sc[0], torch.nn.Conv2d) and isinstance(sc[1], torch.nn.BatchNorm2d)
    assert m.bn2.num_features == 512 and m.linear.in_features == 512


def test_resnet18_imagenet_structure():
    m = resnet18_1w1a_imagenet()
    assert m.fc.out_features == 1000 and m.fc.in_features == 512 and type(m.fc) is torch.nn.Linear
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    b = _binary(m)
    assert len(b) == 16 and all(type(c) is ERBinaryConv2d for c in b)
    assert [c.out_channels for c in b] == [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4
    assert all(c.kernel_size == (3, 3) for c in b)
    assert [i for i, c in enumerate(b) if c.stride != (1, 1)] == [4, 8, 12]
    fp = _plain(m, torch.nn.Conv2d)
    assert fp[0] is m.conv1 and m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2)
    assert [c.kernel_size for c in fp[1:]] == [(1, 1)] * 3 and all(c.stride == (1, 1) for c in fp[1:])
    assert isinstance(m.maxpool, torch.nn.MaxPool2d) and m.maxpool.kernel_size == 3 and m.maxpool.stride == 2
    for layer in (m.layer2, m.layer3, m.layer4):  # AvgPool2d(2) + FP 1x1 conv + BN
        sc = layer[0].shortcut
        assert [type(t) for t in sc] == [torch.nn.AvgPool2d, torch.nn.Conv2d, torch.nn.BatchNorm2d]
    assert all(isinstance(blk.shortcut, torch.nn.Identity) for blk in (m.layer1[0], m.layer1[1], m.layer4[1]))
    assert not _plain(m, torch.nn.BatchNorm1d)  # the ImageNet head has no BatchNorm1d
    assert len([r for r in m.modules() if isinstance(r, RPReLU)]) == 1 + 2 * 8
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(11.7e6, rel=0.01)


def test_resnet18_imagenet_shortcut_matches_conv_at_odd_sizes():
    m = resnet18_1w1a_imagenet(num_classes=5)
    # 112x112: layer4's input is 7x7; the stride-2 conv gives 4x4 and so must the average-pool shortcut
    assert m(torch.randn(1, 3, 112, 112)).shape == (1, 5)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(m.layer2[0].shortcut[0](x), F.avg_pool2d(x, 2))  # even: a plain 2x2 mean


def test_resnet18_imagenet_freeze(native):
    torch.manual_seed(0)
    model = resnet18_1w1a_imagenet(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    model.eval()
    frozen = deploy.freeze(model)
    layers = [m for m in frozen.modules() if isinstance(m, deploy.FrozenBinaryConv2d)]
    assert len(layers) == 16 and all(m.folded_bn for m in layers)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad(), erbnn_ext.use_backend("reference"):
        expected = model(x)
    with torch.no_grad():
        got = frozen(x)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_model_names_and_short_forms():
    assert set(MODELS) == {"resnet20_1w1a", "resnet18_1w1a", "vgg_small_1w1a", "resnet18_1w1a_imagenet"}
    for short, full in ALIASES.items():
        assert model_name(short) == full and model_name(full) == full
    assert model_name("VGG-Small") == "vgg_small_1w1a"
    assert isinstance(build_model("resnet18_imagenet"), erbnn_ext.models.ResNet18ImageNet)
    assert build_model("resnet18_imagenet").fc.out_features == 1000  # the model's own default
    assert build_model("resnet20").linear.out_features == 10
    assert build_model("resnet18_imagenet", num_classes=7, method="irnet").fc.out_features == 7
    assert erbnn_ext.models.resnet18_1w1a_imagenet is resnet18_1w1a_imagenet


def test_vgg_small_structure_and_init():
    torch.manual_seed(0)
    m = vgg_small_1w1a(num_classes=10)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    b = _binary(m)
    assert [(c.in_channels, c.out_channels) for c in b] == [(128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    assert _plain(m, torch.nn.Conv2d) == [m.conv0]
    assert isinstance(m.bn_fc, torch.nn.BatchNorm1d) and m.bn_fc.num_features == 8192
    assert m.fc.in_features == 8192
    assert m.fc.weight.std().item() == pytest.approx(0.01, rel=0.03)
    assert m.conv5.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.03)


def test_resnet_kaiming_init():
    torch.manual_seed(0)
    m = resnet18_1w1a()
    w = m.layer4[1].conv2.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.03)


@pytest.mark.parametrize("method", METHODS)
def test_method_selects_the_binary_conv(method):
    m = resnet20_1w1a(method=method)
    assert m.method == method
    assert all(type(c) is BINARY_CONVS[method] for c in _binary(m)) and len(_binary(m)) == 18
    assert (len([a for a in m.modules() if isinstance(a, ApproxSign)]) > 0) == (method == "erbnn")


def test_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        resnet20_1w1a(method="xnor")
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet50")


def test_set_epoch_schedules():
    m = resnet20_1w1a()
    assert set_epoch(m, 0, 10) == {"p": pytest.approx(0.8)}
    assert set_epoch(m, 5, 10)["p"] == pytest.approx(0.4)
    assert all(float(a.p) == pytest.approx(0.4) for a in m.modules() if isinstance(a, ApproxSign))
    for arch, t_min in (("resnet20_1w1a", 1e-3), ("vgg_small_1w1a", 1e-1)):
        m = build_model(arch, method="irnet")
        assert set_epoch(m, 0, 10)["t"] == pytest.approx(t_min)
        assert set_epoch(m, 10, 10)["t"] == pytest.approx(10.0)
        assert set_epoch(m, 5, 10)["t"] == pytest.approx(math.sqrt(t_min * 10))  # log-linear
        assert all(e.t.item() == pytest.approx(math.sqrt(t_min * 10)) for e in m.modules() if isinstance(e, EDESign))
    m = resnet20_1w1a(method="recu")
    assert set_epoch(m, 0, 10)["tau"] == pytest.approx(0.85)
    assert set_epoch(m, 10, 10)["tau"] == pytest.approx(0.99)
    assert 0.85 < set_epoch(m, 5, 10)["tau"] < 0.92  # exponential: below the linear midpoint
    assert set_epoch(resnet20_1w1a(method="clip"), 3, 10) == {}


# ------------------------------------------------------------------------------- ablation layers
def _grad_of(sign_module, x):
    x = x.clone().requires_grad_()
    sign_module(x).sum().backward()
    return x.grad


def test_surrogate_gradients():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    assert torch.equal(_grad_of(ClipSign(), x), (x.abs() <= 1).double())
    e = EDESign(1e-3, 10.0)
    e.set_epoch(7, 10)
    t = e.t.item()
    torch.testing.assert_close(_grad_of(e, x), max(1 / t, 1) * t * (1 - torch.tanh(t * x) ** 2))
    torch.testing.assert_close(_grad_of(ReCUActSign(), x), (2 - (2 * x).abs()).clamp_min(0))
    assert torch.equal(ClipSign()(x), R.sign(x))


@pytest.mark.parametrize("cls", [ERClipConv2d, EREDEConv2d])
def test_er_ablation_forward_matches_erbnn(cls):
    torch.manual_seed(1)
    er = ERBinaryConv2d(8, 6, 3, padding=1)
    ab = cls(8, 6, 3, padding=1)
    ab.load_state_dict(er.state_dict(), strict=False)
    x = torch.randn(4, 8, 10, 10)
    torch.testing.assert_close(ab(x), er(x), rtol=1e-5, atol=1e-5)  # training: batch statistics
    er.eval(), ab.eval()
    x2 = torch.randn(4, 8, 10, 10) * 2 + 1
    torch.testing.assert_close(ab(x2), er(x2), rtol=1e-5, atol=1e-5)  # eval: running statistics
    assert ab.act_mean.filled == er.act_mean.filled == 1


def test_er_clip_weight_gradient_goes_through_the_standardisation():
    torch.manual_seed(2)
    layer = ERClipConv2d(3, 4, 3).double()
    wb = layer.restored_weight()
    gw = torch.randn_like(wb)
    (dw,) = torch.autograd.grad(wb, layer.weight, gw)
    rows = layer.weight.detach().reshape(4, -1)
    mean = rows.mean(1, keepdim=True)
    alpha = (rows - mean).pow(2).mean(1, keepdim=True).sqrt()
    what = (rows - mean) / alpha
    g = gw.reshape(4, -1) * (what.abs() <= 1)  # clip STE, then method.md section 1's backward
    want = (g - g.mean(1, keepdim=True) - what * (g * what).mean(1, keepdim=True)) / alpha
    torch.testing.assert_close(dw.reshape(4, -1), want, rtol=1e-10, atol=1e-12)


def test_irnet_and_recu_forward_match_baselines():
    torch.manual_seed(3)
    x = torch.randn(2, 8, 6, 6)
    ir = IRNetConv2d(8, 5, 3, padding=1)
    torch.testing.assert_close(ir(x), F.conv2d(R.sign(x), baselines.irnet_binarize_weight(ir.weight), padding=1))
    rc = ReCUConv2d(8, 5, 3, padding=1).eval()
    rc.set_epoch(3, 10)
    want = F.conv2d(R.sign(x), R.sign(baselines.recu_binarize_weight(rc.weight, rc.tau.item())), padding=1)
    torch.testing.assert_close(rc(x), want)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_one_step(method):
    torch.manual_seed(0)
    m = resnet20_1w1a(method=method)
    set_epoch(m, 0, 10)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = F.cross_entropy(m(x), y)
    loss.backward()
    binary_grads = [c.weight.grad for c in _binary(m)]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in binary_grads)
    opt.step()
    after = m.state_dict()
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    assert not torch.equal(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])
    if method in ("erbnn", "clip", "ede"):  # the activation statistics ring buffers advanced
        assert after["layer1.0.conv1.act_mean.count"].item() == 1
    m.eval()
    with torch.no_grad():
        assert torch.isfinite(m(x)).all()
