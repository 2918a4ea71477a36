"""pytest-benchmark twin of `erbnn bench`'s restoration-overhead section (same cases: erbnn_ext/benchmarks).

    PYTHONPATH=. python -m pytest bench/test_bench_overhead.py --benchmark-only --benchmark-group-by=group

Each group is one model/layer/mode, so the methods of a layer are compared side by side.
ERBNN_BENCH_BATCH sets the batch (default 16, as `erbnn bench`).
"""
import os

import pytest

from erbnn_ext.benchmarks import overhead
from erbnn_ext.benchmarks.shapes import MODELS

BATCH = int(os.environ.get("ERBNN_BENCH_BATCH", "16"))
CASES = [pytest.param(model, shape, mode, method, id=f"{model}-{shape.name}-{mode}-{method}")
         for model in ("resnet18", "resnet20") for shape in MODELS[model]
         for mode in overhead.MODES for method in overhead.METHODS
         if mode not in overhead.ER_ONLY_MODES or method.startswith("erbnn")]


@pytest.mark.parametrize("model, shape, mode, method", CASES)
def test_restoration_overhead(benchmark, model, shape, mode, method):
    fn = overhead.make_fn(method, mode, *overhead.make_inputs(shape, BATCH, "cpu"))
    benchmark.group = f"{model}/{shape.name}/{mode}"
    benchmark.extra_info.update(backend=overhead.erbnn_backend(method, mode, "cpu"), batch=BATCH,
                                count=shape.count)
    benchmark(fn)
