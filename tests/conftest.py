import os

import pytest
import torch

import erbnn_ext

NATIVE = erbnn_ext.native_available()
HAS_CUDA = torch.cuda.is_available()
CUDA_KERNELS = NATIVE and erbnn_ext.backend_info()["cuda_compiled"]


def available_isas():
    """CPU code paths this machine can run, best last."""
    if not NATIVE:
        return []
    order = ["scalar", "avx2", "avx512"]
    best = {"scalar": 0, "avx2": 1, "avx512_vpopcntdq": 2}[erbnn_ext.backend_info()["detected_cpu_isa"]]
    return order[: best + 1]


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="no CUDA device" if not HAS_CUDA else "CUDA kernels not compiled")
    for item in items:
        if "cuda" in item.keywords and not (HAS_CUDA and CUDA_KERNELS):
            item.add_marker(skip_cuda)


@pytest.fixture(params=available_isas() or ["none"])
def isa(request):
    """Run the test once per CPU code path (scalar, avx2, avx512) forced through set_cpu_isa."""
    if request.param == "none":
        pytest.skip("native extension not built")
    prev = erbnn_ext.backend_info()["cpu_isa"]
    erbnn_ext.set_cpu_isa(request.param)
    # The binary convs' ISA paths belong to the XNOR engine: keep auto from picking an int8 engine.
    erbnn_ext.set_conv_engine("xnor")
    yield request.param
    erbnn_ext.set_conv_engine(None)
    erbnn_ext.set_cpu_isa({"avx512_vpopcntdq": "avx512"}.get(prev, prev))


# Device parametrization: the CUDA case carries the `cuda` mark that skips without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture
def native():
    """Run the test on the native backend; fails (not skips) if the extension did not build."""
    assert NATIVE, f"native extension missing: {erbnn_ext.backend_info().get('load_error')}"
    with erbnn_ext.use_backend("native"):
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
