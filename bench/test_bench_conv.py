"""pytest-benchmark twin of `erbnn bench`'s binary-conv section: binary_conv2d against F.conv2d fp32/bf16.

    PYTHONPATH=. python -m pytest bench/test_bench_conv.py --benchmark-only --benchmark-group-by=group

extra_info["backend"] says whether binary_conv2d ran the XNOR kernel or the reference.
ERBNN_BENCH_BATCH sets the batch (default 16, as `erbnn bench`).
"""
import os

import pytest

from erbnn_ext.benchmarks import binary_conv as conv, overhead
from erbnn_ext.benchmarks.shapes import MODELS

BATCH = int(os.environ.get("ERBNN_BENCH_BATCH", "16"))
CASES = [pytest.param(model, shape, method, id=f"{model}-{shape.name}-{method}")
         for model in ("resnet18", "resnet20") for shape in MODELS[model] for method in conv.METHODS]


@pytest.mark.parametrize("model, shape, method", CASES)
def test_binary_conv(benchmark, model, shape, method):
    w, x, _, _ = overhead.make_inputs(shape, BATCH, "cpu")
    fn = conv.make_fn(method, shape, w, x)
    benchmark.group = f"{model}/{shape.name}"
    benchmark.extra_info.update(backend=conv.binary_backend("cpu") if method == "binary_conv2d" else "pytorch",
                                batch=BATCH, macs=shape.macs(BATCH))
    benchmark(fn)
