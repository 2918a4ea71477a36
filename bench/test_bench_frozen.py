"""pytest-benchmark twin of `python -m erbnn_ext.benchmarks.frozen`: frozen resnet18_1w1a vs its float32
twin and that twin under bfloat16 autocast, batch 16, one group (no timing asserts).

    PYTHONPATH=. python -m pytest bench/test_bench_frozen.py --benchmark-only --benchmark-group-by=group
"""
import pytest
import torch

from erbnn_ext import deploy
from erbnn_ext.benchmarks.frozen import _calibrated, float_twin


@pytest.fixture(scope="module")
def nets():
    model = _calibrated("resnet18_1w1a")
    return {"frozen": deploy.freeze(model), "float32": float_twin(model)}


@pytest.mark.parametrize("which", ["frozen", "float32", "bfloat16"])
def test_resnet18_inference(benchmark, nets, which):
    benchmark.group = "resnet18_1w1a inference, batch 16"
    x = torch.randn(16, 3, 32, 32)
    net = nets["float32" if which == "bfloat16" else which]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=which == "bfloat16"):
        benchmark(net, x)
