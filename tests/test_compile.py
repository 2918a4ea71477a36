"""A model built from the ER-BNN layers runs under torch.compile (Inductor, CPU) and matches eager."""
import copy

import torch

from erbnn_ext import deploy, nn as enn


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        enn.ERBinaryConv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), enn.RPReLU(8),
        torch.nn.Flatten(), enn.ERBinaryLinear(8 * 6 * 6, 4))


def test_training_step_compiled_matches_eager(native):
    eager = _model()
    compiled_src = copy.deepcopy(eager)
    compiled = torch.compile(compiled_src)
    enn.set_percentile(eager, 0.6)
    enn.set_percentile(compiled_src, 0.6)
    x = torch.randn(4, 3, 6, 6)
    for m in (eager, compiled):
        m(x).square().mean().backward()
    # Inductor fuses and reorders the float ops around the ER layers (BatchNorm, RPReLU), so gradients
    # agree to float32 rounding relative to their scale, not elementwise near zero.
    for (name, a), b in zip(eager.named_parameters(), compiled_src.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5 * float(a.grad.abs().max()), msg=name)
    for (name, a), b in zip(eager.named_buffers(), compiled_src.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_eval_and_frozen_compiled(native):
    model = _model()
    model(torch.randn(4, 3, 6, 6)).sum().backward()  # record statistics
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.compile(model)(x), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.compile(deploy.freeze(model))(x), ref, rtol=1e-4, atol=1e-4)
