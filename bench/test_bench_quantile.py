"""pytest-benchmark twin of `python -m erbnn_ext.benchmarks.quantile`:

    PYTHONPATH=. python -m pytest bench/test_bench_quantile.py --benchmark-only --benchmark-group-by=group

One group per size, so native, torch.quantile and torch.kthvalue sit side by side. No timing asserts:
each case checks its result against the native one (torch.quantile to float32 rounding).
"""
import pytest
import torch

import erbnn_ext  # noqa: F401  (registers torch.ops.erbnn)
from erbnn_ext.benchmarks import quantile as Q

SIZES = [10 ** 5, 10 ** 6, 10 ** 7]
P = 0.8


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"n={n:.0e}")
def data(request):
    return torch.randn(request.param, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", list(Q.METHODS))
def test_two_sided_quantile(benchmark, data, method):
    benchmark.group = f"two_sided_quantile n={data.numel():.0e}"
    got = benchmark(Q.METHODS[method], data, P)
    expected = Q.native(data, P)
    torch.testing.assert_close(got.float(), expected, rtol=2e-7, atol=0)
