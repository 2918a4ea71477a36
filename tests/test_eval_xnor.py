"""Eval-mode ER layers on the XNOR kernel vs their float path; deploy.freeze vs the eval-mode model."""
import pytest
import torch

import erbnn_ext
from erbnn_ext import deploy, nn as enn, ops


def _trained(layer, x_shape, steps=3):
    opt = torch.optim.SGD(layer.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        layer(torch.randn(x_shape) + 0.2).square().mean().backward()
        opt.step()
    return layer.eval()


@pytest.mark.parametrize("cin,cout,k,stride,padding,dilation,bias", [
    (3, 5, 3, 1, 1, 1, False), (65, 7, 3, 2, 1, 1, True), (33, 4, 5, 1, 2, 2, False), (8, 8, 1, 1, 0, 1, True)])
def test_conv_eval_xnor_matches_float_path(native, isa, cin, cout, k, stride, padding, dilation, bias):
    layer = _trained(enn.ERBinaryConv2d(cin, cout, k, stride, padding, dilation, bias=bias), (4, cin, 11, 9))
    x = torch.randn(3, cin, 11, 9) + 0.2
    assert enn.route(layer, x).kernel != "xnor_eval"  # grad enabled here: float path
    with torch.no_grad():
        assert enn.route(layer, x).kernel == "xnor_eval"
        fast = layer(x)
        with erbnn_ext.use_backend("reference"):
            slow = layer(x)
    assert fast.shape == slow.shape
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-4)


def test_linear_eval_xnor_matches_float_path(native):
    layer = _trained(enn.ERBinaryLinear(70, 6, bias=True), (8, 70))
    x = torch.randn(5, 70)
    with torch.no_grad():
        fast = layer(x)
        with erbnn_ext.use_backend("reference"):
            slow = layer(x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-4)


def test_eval_cache_follows_weight_updates(native):
    layer = _trained(enn.ERBinaryConv2d(4, 4, 3, padding=1), (2, 4, 6, 6))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        a = layer(x)
        layer.weight.neg_()
        b = layer(x)
        with erbnn_ext.use_backend("reference"):
            ref = layer(x)
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, ref, rtol=1e-5, atol=1e-4)


class _Block(torch.nn.Module):
    """conv -> BN -> RPReLU with a residual, the shape of the paper's blocks."""

    def __init__(self, c):
        super().__init__()
        self.conv = enn.ERBinaryConv2d(c, c, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(c)
        self.act = enn.RPReLU(c)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + x)


def _small_model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), _Block(16), _Block(16),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), enn.ERBinaryLinear(64, 32), torch.nn.BatchNorm1d(32),
        torch.nn.Linear(32, 10))


def test_freeze_matches_eval_model_and_folds_bn(native):
    torch.manual_seed(0)
    model = _small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3, 8, 8)).logsumexp(1).mean().backward()
        opt.step()
    model.eval()
    frozen = deploy.freeze(model)
    assert isinstance(frozen[2].conv, deploy.FrozenBinaryConv2d) and frozen[2].conv.folded_bn
    assert frozen[2].conv.act is not None and frozen[3].conv.act is not None  # RPReLU + residual fused
    assert isinstance(frozen[2].bn, torch.nn.Identity)
    assert isinstance(frozen[6], deploy.FrozenBinaryLinear) and isinstance(frozen[7], torch.nn.Identity)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad(), erbnn_ext.use_backend("reference"):
        expected = model(x)
    with torch.no_grad():
        got = frozen(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert model.training is False and isinstance(model[2].conv, enn.ERBinaryConv2d)  # original untouched


def test_freeze_untrained_matches_eval_initial_stats():
    model = torch.nn.Sequential(enn.ERBinaryConv2d(3, 4, 3)).eval()  # running statistics (0, 1)
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(deploy.freeze(model)(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,unfolded,fused", [("resnet20_1w1a", 0, 18), ("resnet18_1w1a", 0, 16),
                                                 ("vgg_small_1w1a", 3, 2)])
def test_freeze_paper_models(native, name, unfolded, fused):
    from erbnn_ext import models
    torch.manual_seed(0)
    model = getattr(models, name)(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    model.eval()
    frozen = deploy.freeze(model, chain=False)  # the counts below: without chaining's fold through pools
    binary = [m for m in model.modules() if isinstance(m, (enn.ERBinaryConv2d, enn.ERBinaryLinear))]
    frozen_layers = [m for m in frozen.modules() if isinstance(m, deploy.FrozenBinaryConv2d)]
    assert len(frozen_layers) == len(binary) > 0
    # a BatchNorm folds where it directly follows the binary conv; VGG-Small max-pools first in 3 layers
    assert sum(not m.folded_bn for m in frozen_layers) == unfolded
    # the block tail (residual add and RPReLU) runs in the conv's epilogue where it follows directly
    assert sum(m.act is not None for m in frozen_layers) == fused
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), erbnn_ext.use_backend("reference"):
        expected = model(x)
    with torch.no_grad():
        got = frozen(x)
        unfused = deploy.freeze(model, fuse_tail=False, chain=False)(x)
        chained = deploy.freeze(model)(x)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got, unfused, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chained, got, rtol=1e-4, atol=1e-4)  # tests/test_chain.py: exact where no pool


def test_repack_words_between_cpu_and_cuda_layouts():
    from erbnn_ext import reference as R
    for c in (1, 31, 32, 33, 64, 65, 100, 130):
        w = torch.randn(3, c, 2, 2)
        wp64 = R.pack_conv_weight(w)  # the CPU layout
        wp32 = deploy.repack_words(wp64, c, 32)
        assert wp32.dtype == torch.int32 and wp32.shape[-1] == (c + 31) // 32
        assert torch.equal(R.unpack_signs(wp32, c, dim=1), R.unpack_signs(wp64, c, dim=1))
        assert torch.equal(deploy.repack_words(wp32, c, 64), wp64)


def _trained_frozen():
    """A frozen _small_model after two training steps, and an input for it."""
    torch.manual_seed(0)
    model = _small_model()
    for _ in range(2):
        model(torch.randn(8, 3, 8, 8)).sum().backward()
    return deploy.freeze(model.eval()), torch.randn(2, 3, 8, 8)


def test_frozen_model_moves_between_device_layouts(native, monkeypatch):
    # A frozen model carries the packed words of the device it was frozen on; .to(device) regroups them
    # for the target's kernels. Without a GPU: the CUDA layout via a patched word size, then back.
    frozen, x = _trained_frozen()
    with torch.no_grad():
        before = frozen(x)
    layer = frozen[2].conv
    wp64 = layer.w_packed.clone()
    monkeypatch.setattr(deploy.layers, "word_bits", lambda device: 32)  # what the frozen layers read
    frozen.to("cpu")
    assert layer.w_packed.dtype == torch.int32 and layer.w_packed.shape[-1] == 1
    with pytest.raises(TypeError, match="w_packed must be int64"):  # a clear error, not a wrong result
        with torch.no_grad():
            frozen(x)
    monkeypatch.undo()
    frozen.to("cpu")
    assert torch.equal(layer.w_packed, wp64)
    with torch.no_grad():
        assert torch.equal(frozen(x), before)


@pytest.mark.cuda
def test_frozen_cpu_model_runs_on_cuda(native):
    frozen, x = _trained_frozen()
    with torch.no_grad():
        on_cpu = frozen(x)
        on_cuda = frozen.to("cuda")(x.cuda()).cpu()
        back = frozen.to("cpu")(x)
    assert frozen[2].conv.w_packed.dtype == torch.int64 and torch.equal(back, on_cpu)
    torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-5, atol=1e-5)


def test_fused_frozen_model_copies_and_unfused_option(native):
    import copy
    torch.manual_seed(0)
    model = _small_model()
    for _ in range(2):
        model(torch.randn(8, 3, 8, 8)).sum().backward()
    model.eval()
    frozen, plain = deploy.freeze(model), deploy.freeze(model, fuse_tail=False)
    assert plain[2].conv.act is None and frozen[2].conv.act is not None
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = frozen(x)
        torch.testing.assert_close(y, plain(x), rtol=1e-5, atol=1e-5)
        twin = copy.deepcopy(frozen)  # the generated forward is rebound to the copy's own modules
        twin[2].conv.out_bias.add_(1.0)
        assert torch.equal(frozen(x), y) and not torch.equal(twin(x), y)
