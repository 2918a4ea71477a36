import warnings

import pytest
import torch

import erbnn_ext
from erbnn_ext import _backend, functional as EF


def test_backend_info_contract():
    info = erbnn_ext.backend_info()
    for key in ("native", "cpu_isa", "cuda_compiled", "cuda_archs", "torch", "version"):
        assert key in info
    assert info["version"] == erbnn_ext.__version__
    assert info["cpu_isa"] in ("avx512_vpopcntdq", "avx2", "scalar", None)


def test_native_built():
    # CI builds the extension: a missing .so must fail loudly, not fall back silently.
    assert erbnn_ext.native_available(), erbnn_ext.backend_info().get("load_error")


def test_set_backend_validates():
    with pytest.raises(ValueError, match="backend must be one of"):
        erbnn_ext.set_backend("fast")


def test_use_backend_restores():
    before = erbnn_ext.get_backend()
    with erbnn_ext.use_backend("reference"):
        assert erbnn_ext.get_backend() == "reference"
        assert not _backend.native_active()
    assert erbnn_ext.get_backend() == before


def test_native_missing_warns_once(monkeypatch):
    monkeypatch.setattr(erbnn_ext._native, "_C", None)
    monkeypatch.setattr(_backend, "_warned", False)
    with erbnn_ext.use_backend("native"), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert not _backend.native_active()
        assert not _backend.native_active()
    assert sum("native backend requested" in str(r.message) for r in rec) == 1


def test_set_cpu_isa_rejects_unknown():
    with pytest.raises(ValueError, match="ERBNN_CPU_ISA"):
        erbnn_ext.set_cpu_isa("sse9")


# ------------------------------------------------------------------ the build: knobs, ABI, torch range
from erbnn_ext import _native  # noqa: E402

ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))


def test_knobs_are_torch_ops(native):
    # No pybind11 module: the process-wide knobs are torch.ops.erbnn._* ops, wrapped by _native.
    assert torch.ops.erbnn._cpu_isa() == _native.cpu_isa() == erbnn_ext.backend_info()["cpu_isa"]
    assert _native.detected_cpu_isa() == erbnn_ext.backend_info()["detected_cpu_isa"]
    prev = _native.cpu_isa()
    try:
        assert _native.set_cpu_isa("scalar") == "scalar" == torch.ops.erbnn._cpu_isa()
    finally:
        _native.set_cpu_isa({"avx512_vpopcntdq": "avx512"}.get(prev, prev))
    assert _native.cpu_isa() == prev
    assert "xnor" in _native.conv_engines() and isinstance(_native.amx_available(), bool)
    _native.set_conv_engine("xnor")
    try:
        assert _native.get_conv_engine() == "xnor"
    finally:
        _native.set_conv_engine("")
    with pytest.raises(ValueError, match="set_conv_engine"):
        _native.set_conv_engine("fastest")
    assert isinstance(_native._conv_engine_choices(), dict)
    assert _native.cuda_compiled() == erbnn_ext.backend_info()["cuda_compiled"]
    # the pybind11 module's names, for existing callers
    for name in ("cpu_isa", "detected_cpu_isa", "set_cpu_isa", "amx_available", "conv_engines", "set_conv_engine",
                 "get_conv_engine", "_set_amx_disabled", "_set_amx_emulated", "_clear_conv_engine_cache",
                 "_conv_engine_choices", "cuda_compiled"):
        assert callable(getattr(_native._C, name)), name


def test_library_uses_the_stable_python_abi(native):
    # One build per platform and torch: the module is abi3 and does not link libtorch_python.
    path = _native._module.__file__
    assert path.endswith(".abi3.so"), path
    readelf = __import__("shutil").which("readelf")
    if readelf:
        needed = __import__("subprocess").run([readelf, "-d", path], capture_output=True, text=True).stdout
        assert "libtorch_cpu.so" in needed and "libtorch_python" not in needed


def test_build_info_records_torch_and_archs(native):
    from erbnn_ext import _build_info

    assert _build_info.TORCH_VERSION == torch.__version__
    assert _native.cuda_archs() == (list(_build_info.CUDA_ARCHS) if _native.cuda_compiled() else [])


def test_other_torch_is_refused_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(_native, "_build_info", __import__("types").SimpleNamespace(TORCH_VERSION="2.11.0+cu130"))
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    msg = _native._torch_mismatch()
    assert "built against torch 2.11.0+cu130" in msg and "2.14.1" in msg and "rebuild" in msg
    monkeypatch.setattr(torch, "__version__", "2.11.0")  # a local-version suffix alone is no mismatch
    assert _native._torch_mismatch() is None


def test_cuda_supported_without_cuda_kernels_or_gpu():
    if _native.cuda_compiled() and torch.cuda.is_available():
        pytest.skip("a usable GPU: tests/test_gpu_check.py::test_cuda_supported_on_this_gpu covers it")
    assert _native.cuda_supported("cuda:0") is False and _native.cuda_supported(0) is False
    with pytest.raises(ValueError, match="CUDA device"):
        _native.cuda_supported("cpu")


def test_supported_torch_range_is_stated_once_everywhere():
    import importlib.util
    from importlib import metadata

    spec = importlib.util.spec_from_file_location("build_backend", f"{ROOT}/tools/build_backend.py")
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    assert f'dependencies = ["torch{backend.TORCH_RANGE}"' in open(f"{ROOT}/pyproject.toml").read()
    assert "torch 2.11 through 2.14" in open(f"{ROOT}/README.md").read()
    # the isolated build pins the build's torch to the one installed here
    assert backend.torch_requirement() == f"torch=={metadata.version('torch')}"
    assert backend.get_requires_for_build_wheel()[-1] == backend.torch_requirement()


def test_resolve_follows_the_backend_on_every_call():
    from erbnn_ext import ops, reference as R
    cpu = torch.device("cpu")
    for _ in range(2):  # the second round hits resolve's memo of the native op
        assert ops.resolve("binary_conv2d_bits", cpu) is torch.ops.erbnn.binary_conv2d_bits.default
        with erbnn_ext.use_backend("reference"):
            assert ops.resolve("binary_conv2d_bits", cpu) is R.binary_conv2d_bits
        assert ops.resolve("binary_conv2d_bits", cpu, native=False) is R.binary_conv2d_bits
