"""A model built from the ER-BNN layers runs under torch.compile (Inductor, CPU) and matches eager."""
import copy

import pytest
import torch

from erbnn_ext import deploy, nn as enn


# The process's thread count when this file is collected, before any test can change it: tests that run
# benchmark mains in-process (test_cli_bench: --threads 1) leave torch at 1 thread, and at 1 thread
# Inductor's reductions round differently enough (1.7e-5 on a 0.04 gradient element) to fail the tight
# tolerances below.
_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _default_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(_THREADS)
    yield
    torch.set_num_threads(prev)


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
    # Buffers first: a state update lost under compile shows up as the buffer it missed rather than as
    # the gradients it skews (torch 2.11 drops in-place copy_/fill_/add_ on 0-dim float64 buffers inside a
    # compiled forward, e.g. ApproxSign.b: assign with `buf[...] = v` instead).
    for (name, a), b in zip(eager.named_buffers(), compiled_src.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # Inductor fuses and reorders the float ops around the ER layers (BatchNorm, RPReLU), so gradients
    # agree to float32 rounding relative to their scale, not elementwise near zero.
    for (name, a), b in zip(eager.named_parameters(), compiled_src.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5 * float(a.grad.abs().max()), msg=name)


def test_eval_and_frozen_compiled(native):
    model = _model()
    model(torch.randn(4, 3, 6, 6)).sum().backward()  # record statistics
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.compile(model)(x), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.compile(deploy.freeze(model))(x), ref, rtol=1e-4, atol=1e-4)


def test_zero_dim_float64_buffer_update_survives_compile():
    # The torch behaviour behind the test above, in isolation: an in-place update of a 0-dim float64 buffer
    # in a compiled forward must be kept and seen by later reads in the same graph. Torch 2.11 drops it for
    # copy_ (index assignment works there), so the layers' state updates must not rely on copy_ of 0-dim
    # float64 buffers while 2.11 is supported.
    class Width(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("b", torch.ones((), dtype=torch.float64))

        def forward(self, x):
            self.b[...] = x.abs().mean()
            return x * self.b.clone().float()

    m, x = Width(), torch.randn(5)
    y = torch.compile(m, backend="aot_eager")(x)
    want = x.abs().mean().double()
    torch.testing.assert_close(m.b, want)
    torch.testing.assert_close(y, x * want.float())
