"""pytest-benchmark twin of `python -m erbnn_ext.benchmarks.band_hits`:

    PYTHONPATH=. python -m pytest bench/test_bench_band_hits.py --benchmark-only --benchmark-group-by=group

The training activation op on the input of resnet20_1w1a's first ER layer after a few SGD steps on the
embedded digits, with the sampled band (default) and with the radix select forced, side by side in one
group (a band slower than the radix select is a miss). No timing asserts: both must give the same q bits.
"""
import os

import pytest
import torch

import erbnn_ext  # noqa: F401  (registers torch.ops.erbnn)
from erbnn_ext.benchmarks import band_hits as H

P = 0.8


@pytest.fixture(scope="module")
def activation():
    return H.record_inputs(batch=16, p=P, steps=6, record=1)[0]


@pytest.mark.parametrize("select", ["band", "radix"])
def test_activation_train_op(benchmark, activation, select, monkeypatch):
    if select == "radix":
        monkeypatch.setenv("ERBNN_BAND_SELECT_MIN", str(1 << 62))
    else:
        monkeypatch.delenv("ERBNN_BAND_SELECT_MIN", raising=False)
    benchmark.group = f"restore_activation_train on a recorded activation, {tuple(activation.shape)}"
    benchmark(H.train_op(activation, P))
    width = H.train_op(activation, P)()[4]  # fresh rings: the width is this call's q
    monkeypatch.setenv("ERBNN_BAND_SELECT_MIN", str(1 << 62))
    assert torch.equal(width, H.train_op(activation, P)()[4])
