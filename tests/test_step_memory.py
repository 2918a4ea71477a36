"""What an ER layer's training step keeps for its backward (functional.ERConv2dStep): with lean_train (the
default), the restored y's packed signs and statistics instead of y, and w_b's packed signs instead of w_b
(ops.unpack_restored gives them back bit for bit: test_unpack_restored.py), so the step holds what a float
conv's does, its input x and weight; with lean_train off, x, y, w and w_b."""
import copy

import pytest
import torch

from erbnn_ext import nn as enn, ops

pytestmark = pytest.mark.skipif(not ops.has_kernel("restore_activation_train_nhwc", "cpu"),
                                reason="needs the compiled CPU kernels")


def _saved_bytes(layer, x):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    return sum(storages.values()), out


@pytest.mark.parametrize("nhwc,layout", [(True, "nchw"), (False, "nchw"), (True, "channels_last")])
def test_lean_step_keeps_bits_not_y(nhwc, layout):
    torch.manual_seed(0)
    layer = enn.ERBinaryConv2d(16, 16, 3, padding=1, lean_train=True).train()
    layer.nhwc_train = nhwc
    x = torch.randn(8, 16, 16, 16)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    saved, out = _saved_bytes(layer, x)
    assert out.grad_fn.name() == "ERConv2dStepBackward"
    small = layer.weight.nbytes + layer.weight.nbytes // 32 + 4096  # w, w_b's packed signs, the statistics
    # x (for the surrogate's backward) and y's packed signs; y itself would add x's size again, w_b w's
    assert saved <= x.nbytes + x.nbytes // 32 + small
    out.backward(torch.randn_like(out))
    assert x.grad is not None and layer.weight.grad is not None


@pytest.mark.parametrize("nhwc,layout", [(True, "nchw"), (False, "nchw"), (True, "channels_last")])
def test_lean_step_equals_the_default_step(nhwc, layout):
    # The same step with and without lean_train: the default keeps y and w_b themselves (x's size more),
    # the lean one rebuilds them from their signs; outputs, gradients and buffers equal bit for bit.
    torch.manual_seed(1)
    base = enn.ERBinaryConv2d(16, 8, 3, padding=1, nhwc_train=nhwc, lean_train=False).train()
    lean = copy.deepcopy(base)
    lean.lean_train = True
    x = torch.randn(4, 16, 12, 12)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grads, saved = [], []
    for layer in (base, lean):
        xi = x.clone().requires_grad_()
        nbytes, out = _saved_bytes(layer, xi)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        grads.append((out.detach(), xi.grad, layer.weight.grad))
        saved.append(nbytes)
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    for (name, a), (_, b) in zip(base.named_buffers(), lean.named_buffers()):
        assert torch.equal(a, b), name
    assert saved[0] >= saved[1] + x.nbytes // 2  # the default keeps y (x's size) on top of the lean step


def _float_conv(er):
    conv = torch.nn.Conv2d(er.in_channels, er.out_channels, er.kernel_size, er.stride, er.padding, bias=False)
    with torch.no_grad():
        conv.weight.copy_(er.weight)
    return conv


@pytest.mark.parametrize("cin,cout,hw,stride", [(16, 16, 16, 1), (16, 32, 16, 2), (64, 64, 8, 1), (130, 256, 6, 1),
                                                (256, 512, 4, 2)])
def test_default_step_keeps_no_more_than_a_float_conv(cin, cout, hw, stride):
    # The default route of every layer shape (NHWC and NCHW steps): what the step saves for its backward is
    # a float conv's (x, w) plus y's and w_b's signs (1/32 of x and w; whole 64-bit words per pixel above 32
    # channels) and the statistics (two per output channel, a few 0-dim tensors).
    torch.manual_seed(2)
    er = enn.ERBinaryConv2d(cin, cout, 3, stride, 1).train()
    x = torch.randn(8, cin, hw, hw, requires_grad=True)
    saved_er, out = _saved_bytes(er, x)
    assert out.grad_fn.name() == "ERConv2dStepBackward"
    saved_float, _ = _saved_bytes(_float_conv(er), x)
    assert saved_float >= x.nbytes + er.weight.nbytes
    words = (cin + 63) // 64 * 64 / cin if cin > 32 else 1
    assert saved_er <= saved_float + (x.nbytes + er.weight.nbytes) * words / 32 + 8 * cout + 4096


@pytest.mark.parametrize("cin,hw,layout", [(16, 12, "nchw"), (16, 12, "channels_last"), (200, 5, "nchw"),
                                           (200, 5, "channels_last")])
def test_default_step_equals_the_keeping_step(cin, hw, layout):
    # The default (lean) step against lean_train off on the route each shape takes by default (NHWC for
    # <= 128 channels, NCHW above): outputs, both gradients and every buffer bit for bit, over two steps.
    torch.manual_seed(3)
    lean = enn.ERBinaryConv2d(cin, 24, 3, padding=1, bias=True).train()
    keep = copy.deepcopy(lean)
    keep.lean_train = False
    x = torch.randn(6, cin, hw, hw)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for step in range(2):
        res = []
        for layer in (lean, keep):
            layer.zero_grad()
            xi = (x + step).requires_grad_()
            out = layer(xi)
            out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
            res.append((out.detach(), xi.grad, layer.weight.grad, layer.bias.grad))
        for a, b in zip(*res):
            assert torch.equal(a, b)
        for (name, a), (_, b) in zip(lean.named_buffers(), keep.named_buffers()):
            assert torch.equal(a, b), name


def test_expanded_and_sliced_inputs_equal_the_keeping_step():
    # The backward's input gradient runs on a stand-in of y's shape over x's memory: an expanded x (fewer
    # values than y) and a sliced one (an offset into a larger storage) give the keeping step's results.
    torch.manual_seed(4)
    lean = enn.ERBinaryConv2d(16, 8, 3, padding=1).train()
    keep = copy.deepcopy(lean)
    keep.lean_train = False
    cases = [(torch.randn(1, 16, 6, 6), lambda t: t.expand(5, 16, 6, 6)),
             (torch.randn(5, 16, 6, 9), lambda t: t[:, :, :, 2:8])]
    for source, make in cases:
        res = []
        for layer in (lean, keep):
            layer.zero_grad()
            leaf = source.clone().requires_grad_()
            out = layer(make(leaf))
            out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
            res.append((out.detach(), leaf.grad, layer.weight.grad))
        for a, b in zip(*res):
            assert torch.equal(a, b)
