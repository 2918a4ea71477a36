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
