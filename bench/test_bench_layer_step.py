"""pytest-benchmark twin of `python -m erbnn_ext.benchmarks.layer_step`: one ERBinaryConv2d training step
per ResNet-18 binary layer shape, native vs reference, grouped per layer (no timing asserts).

    PYTHONPATH=. python -m pytest bench/test_bench_layer_step.py --benchmark-only --benchmark-group-by=group
"""
import pytest

from erbnn_ext.benchmarks.layer_step import BACKENDS, make_step
from erbnn_ext.benchmarks.shapes import RESNET18


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", RESNET18, ids=lambda s: s.name)
def test_layer_training_step(benchmark, shape, backend):
    benchmark.group = f"ERBinaryConv2d step {shape.name} batch 16"
    benchmark(make_step(shape, 16, backend))
