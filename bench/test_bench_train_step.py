"""pytest-benchmark twin of `python -m erbnn_ext.benchmarks.train_step` (and `erbnn bench`'s train_step
section): per ResNet-20 / ResNet-18 binary layer shape one ERBinaryConv2d training step against nn.Conv2d's,
and each model's full training step against its float twin, grouped so each pair sits side by side
(no timing asserts).

    PYTHONPATH=. python -m pytest bench/test_bench_train_step.py --benchmark-only --benchmark-group-by=group
ERBNN_BENCH_BATCH sets the batch (default 16, as `erbnn bench`).
"""
import os

import pytest

from erbnn_ext.benchmarks import train_step as T
from erbnn_ext.benchmarks.shapes import MODELS

BATCH = int(os.environ.get("ERBNN_BENCH_BATCH", "16"))
LAYERS = [pytest.param(m, s, id=f"{m}-{s.name}") for m in ("resnet20", "resnet18") for s in MODELS[m]]


@pytest.mark.parametrize("method", T.LAYER_METHODS)
@pytest.mark.parametrize("model,shape", LAYERS)
def test_layer_training_step(benchmark, model, shape, method):
    benchmark.group = f"layer training step {model} {shape.name} batch {BATCH}"
    benchmark(T.layer_step(shape, BATCH, method))


@pytest.mark.parametrize("method", T.MODEL_METHODS)
@pytest.mark.parametrize("model", ["resnet20", "resnet18"])
def test_model_training_step(benchmark, model, method):
    benchmark.group = f"model training step {model} batch {BATCH}"
    benchmark(T.model_step(model, BATCH, method))
