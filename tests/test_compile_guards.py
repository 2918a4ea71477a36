"""torch.compile of ER models: buffers are the only state, so training compiles once (at most one
recompile across set_percentile and a dozen steps) and eval compiles with fullgraph=True; both match eager."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

from erbnn_ext import deploy, nn as enn


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        enn.ERBinaryConv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), enn.RPReLU(8),
        enn.ERBinaryConv2d(8, 8, 3, padding=1, bias=True), torch.nn.BatchNorm2d(8), enn.RPReLU(8),
        torch.nn.Flatten(), enn.ERBinaryLinear(8 * 6 * 6, 4))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_training_compiles_once_across_steps_and_percentile(native):
    eager = _model()
    src = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(src, backend=counter, fullgraph=True)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (eager, src)]
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 4, (4,))
    for step in range(12):
        if step == 6:  # an epoch boundary
            enn.set_percentile(eager, 0.4)
            enn.set_percentile(src, 0.4)
        for model, opt in ((eager, opts[0]), (compiled, opts[1])):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert counter.frame_count <= 2, f"{counter.frame_count} compilations"
    for (name, a), b in zip(eager.state_dict().items(), src.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_eval_compiles_fullgraph(native):
    model = _model()
    model(torch.randn(4, 3, 6, 6)).sum().backward()
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    counter = CompileCounterWithBackend("aot_eager")
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(model, backend=counter, fullgraph=True)
        torch.testing.assert_close(compiled(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled(x + 0.1), model(x + 0.1), rtol=1e-5, atol=1e-5)
        frozen = torch.compile(deploy.freeze(model), backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(frozen(x), ref, rtol=1e-4, atol=1e-4)
    assert counter.frame_count == 1
