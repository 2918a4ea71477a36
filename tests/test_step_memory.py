"""What an ER layer's training step keeps for its backward (functional.ERConv2dStep): with lean_train, the
restored y's packed signs and statistics instead of y, and w_b's packed signs instead of w_b
(ops.unpack_restored gives them back bit for bit: test_unpack_restored.py), so the step holds about what a float conv's does:
its input x; without it (the default: a faster backward), x, y and w_b."""
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
    base = enn.ERBinaryConv2d(16, 8, 3, padding=1, nhwc_train=nhwc).train()
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
