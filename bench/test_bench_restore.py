"""pytest-benchmark: weight restoration on the binary layer shapes of ResNet-18 and ResNet-20,
native fused kernels vs the reference, IR-Net and ReCU (forward), and the fused backward vs autograd
of the reference.

    pytest bench/test_bench_restore.py --benchmark-group-by=param:layer
Measurement code: erbnn_ext/benchmarks/overhead.py (also `python -m erbnn_ext.benchmarks.overhead`).
"""
import pytest
import torch

from erbnn_ext.benchmarks import overhead as B
from erbnn_ext.benchmarks.shapes import MODELS

LAYERS = [pytest.param(m, s, id=f"{m}-{s.name}") for m in ("resnet18", "resnet20") for s in MODELS[m]]


def _run(benchmark, model, layer, fns, method):
    benchmark.extra_info.update(model=model, layer=layer.name, shape=list(layer.weight_shape()),
                                count=layer.count, threads=torch.get_num_threads())
    benchmark(fns[method])


@pytest.mark.parametrize("method", B.FORWARD_METHODS)
@pytest.mark.parametrize("model,layer", LAYERS)
def test_weight_forward(benchmark, model, layer, method):
    w = torch.randn(layer.weight_shape())
    _run(benchmark, model, layer, B.weight_forward_fns(w), method)


@pytest.mark.parametrize("method", B.BACKWARD_METHODS)
@pytest.mark.parametrize("model,layer", LAYERS)
def test_weight_backward(benchmark, model, layer, method):
    w = torch.randn(layer.weight_shape())
    _run(benchmark, model, layer, B.weight_backward_fns(w), method)
