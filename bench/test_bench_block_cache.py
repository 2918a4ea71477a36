"""pytest-benchmark twin of `python -m erbnn_ext.benchmarks.block_cache`: a full training step of each model
and its float twin with the block cache enabled and disabled (malloc alone), grouped so each pair sits side
by side (no timing asserts). The cache is left enabled afterwards.

    PYTHONPATH=. python -m pytest bench/test_bench_block_cache.py --benchmark-only --benchmark-group-by=group
ERBNN_BENCH_BATCH sets the batch (default 64, as the memory benchmark).
"""
import os

import pytest

from erbnn_ext import cpu_allocator
from erbnn_ext.benchmarks.train_step import MODEL_METHODS, model_step

BATCH = int(os.environ.get("ERBNN_BENCH_BATCH", "64"))


@pytest.mark.parametrize("cache", ["block_cache", "malloc"])
@pytest.mark.parametrize("method", MODEL_METHODS)
@pytest.mark.parametrize("model", ["resnet20", "resnet18"])
def test_training_step_allocator(benchmark, model, method, cache):
    if not cpu_allocator.enable_block_cache():
        pytest.skip(f"block cache unavailable: {cpu_allocator.allocator_state()['block_cache']}")
    if cache == "malloc":
        cpu_allocator.disable_block_cache()
    benchmark.group = f"training step {model} {method} batch {BATCH}: block cache vs malloc"
    try:
        benchmark(model_step(model, BATCH, method))
    finally:
        cpu_allocator.enable_block_cache()
