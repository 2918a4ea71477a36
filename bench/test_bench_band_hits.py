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
    env = "ERBNN_TRAIN_BAND_SELECT_MIN"
    radix = str(1 << 62)
    if select == "radix":
        monkeypatch.setenv(env, radix)
    else:
        monkeypatch.delenv(env, raising=False)
    benchmark.group = f"restore_activation_train on a recorded activation, {tuple(activation.shape)}"
    benchmark(H.train_op(activation, P))
    # fresh rings: the width is one call's q; the band's and the radix select's must be the same bits
    monkeypatch.delenv(env, raising=False)
    band_width = H.train_op(activation, P)()[4]
    monkeypatch.setenv(env, radix)
    assert torch.equal(band_width, H.train_op(activation, P)()[4])
