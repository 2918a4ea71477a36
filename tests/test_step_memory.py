"""What an ER layer's training step keeps for its backward (functional.ERConv2dStep): the restored y's
packed signs and statistics instead of y, and w_b's packed signs instead of w_b (_nhwc.rows_from_sign_bytes gives y
back bit for bit), so the step holds about what a float conv's does: its input x."""
import pytest
import torch

from erbnn_ext import _nhwc, nn as enn, ops

pytestmark = pytest.mark.skipif(not ops.has_kernel("restore_activation_train_nhwc", "cpu"),
                                reason="needs the compiled CPU kernels")


def _train_nhwc(x):
    state = [torch.zeros(100, dtype=torch.float64), torch.zeros((), dtype=torch.int64),
             torch.ones((), dtype=torch.float64), torch.zeros(10, dtype=torch.float64),
             torch.zeros((), dtype=torch.int64), torch.zeros(10, dtype=torch.float64), torch.zeros((), dtype=torch.int64)]
    n, c, h, w = x.shape
    return ops.restore_activation_train_nhwc(x.reshape(n, c, h * w), torch.tensor(0.8, dtype=torch.float64), *state,
                                             0.1)


@pytest.mark.parametrize("c", [1, 3, 8, 16, 17, 63, 64, 65, 130])
def test_rows_from_bits_is_the_ops_y(c):
    torch.manual_seed(c)
    for x in (torch.randn(3, c, 5, 4) * 3 + 1, torch.full((2, c, 3, 3), -0.5),  # sigma = 0: y = mean
              torch.randint(-2, 3, (2, c, 4, 4)).float()):  # ties with the mean
        y, mean, sigma, _, _, bits = _train_nhwc(x)
        by = _nhwc.sign_bytes(bits, c)
        assert by.dtype == torch.uint8 and by.shape == (*y.shape[:2], (c + 7) // 8)
        assert torch.equal(_nhwc.rows_from_sign_bytes(by, c, mean, sigma), y)
    y, mean, sigma, _, _, bits = _train_nhwc(torch.randn(0, c, 3, 3))  # an empty batch
    assert _nhwc.rows_from_sign_bytes(_nhwc.sign_bytes(bits, c), c, mean, sigma).shape == (0, 9, c)


def _saved_bytes(layer, x):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    return sum(storages.values()), out


@pytest.mark.parametrize("nhwc,layout", [(True, "nchw"), (False, "nchw"), (True, "channels_last")])
def test_step_keeps_bits_not_y(nhwc, layout):
    torch.manual_seed(0)
    layer = enn.ERBinaryConv2d(16, 16, 3, padding=1).train()
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
