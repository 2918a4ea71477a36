"""pytest-benchmark: binary-conv engines per layer (xnor, int8_vnni, amx, onednn_int8, auto) against F.conv2d fp32 /
bf16 and torch's int8 quantized conv2d.

    pytest bench/test_bench_engines.py --benchmark-group-by=param:layer,param:batch
Measurement code: erbnn_ext/benchmarks/engines.py.
"""
import pytest
import torch

from erbnn_ext.benchmarks import engines as E
from erbnn_ext.benchmarks.shapes import MODELS

LAYERS = [pytest.param(m, s, id=f"{m}-{s.name}") for m in MODELS for s in MODELS[m]]


@pytest.mark.parametrize("impl", E.COLUMNS)
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("model,layer", LAYERS)
def test_layer(benchmark, model, layer, batch, impl):
    fn = E.layer_fns(layer, batch)[impl]
    if fn is None:
        pytest.skip(f"{impl} is not available on this machine")
    benchmark.extra_info.update(model=model, layer=layer.name, batch=batch, macs=layer.macs(batch),
                                threads=torch.get_num_threads())
    with torch.no_grad():
        benchmark(fn)
