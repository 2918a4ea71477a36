"""pytest-benchmark: binary 3x3 layers of the paper's models, XNOR-popcount vs F.conv2d fp32 / bf16.

    pytest bench/test_bench_binary_conv.py --benchmark-group-by=param:layer
Measurement code: erbnn_ext/benchmarks/binary_conv.py.
"""
import pytest
import torch

from erbnn_ext.benchmarks import binary_conv as B
from erbnn_ext.benchmarks.shapes import MODELS

LAYERS = [pytest.param(m, s, id=f"{m}-{s.name}") for m in MODELS for s in MODELS[m]]


@pytest.mark.parametrize("impl", ["binary_packed", "binary_full", "fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("model,layer", LAYERS)
def test_layer(benchmark, model, layer, batch, impl):
    fn = B.layer_fns(layer, batch)[impl]
    benchmark.extra_info.update(model=model, layer=layer.name, batch=batch, macs=layer.macs(batch),
                                threads=torch.get_num_threads())
    with torch.no_grad():
        benchmark(fn)


@pytest.mark.parametrize("threads", [1, 2])
def test_microkernel(benchmark, threads):
    res = benchmark.pedantic(B.microkernel, kwargs=dict(threads=threads, min_time=0.2), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    assert res["bit_macs_per_s"] > 0
