"""erbnn_ext: ER-BNN (Efficient Restoration for Binary Neural Networks) for PyTorch, with fused kernels.

Quick use::

    import erbnn_ext
    erbnn_ext.backend_info()                 # what was compiled and which CPU path runs
    from erbnn_ext import functional as EF
    w_b, mean, alpha = EF.restore_weight(conv.weight)
"""
import platform

import torch

from . import _native, _backend
from ._version import __version__
from ._backend import get_backend, set_backend, use_backend
from . import ops, reference, functional, baselines, nn, models, deploy  # noqa: E402,F401
from .summary import summary  # noqa: E402  (the function; the module stays importable as erbnn_ext.summary)


def native_available() -> bool:
    """True when the compiled extension (torch.ops.erbnn kernels) loaded."""
    return _native.available()


def set_cpu_isa(name: str) -> str:
    """Cap the CPU code path ("scalar", "avx2", "avx512", "auto"); returns the path now active.
    The environment variable ERBNN_CPU_ISA sets it at load."""
    if not native_available():
        raise RuntimeError(f"the native extension is not loaded: {_native.LOAD_ERROR}")
    return _native.set_cpu_isa(name)


CONV_ENGINES = ("xnor", "int8_vnni", "amx", "onednn_int8")


def set_conv_engine(name) -> None:
    """Force the CPU binary-conv engine: "xnor" (XNOR-popcount), "int8_vnni" (+-1 int8 GEMM, AVX512-VNNI),
    "amx" (int8 GEMM on AMX tiles), "onednn_int8" (torch's oneDNN int8 conv on the +-1 operands) or "auto"
    (the fastest for each layer shape, measured on its first call in the process:
    `erbnn_ext._native.conv_engine_reasons()` lists the timings).
    None hands the choice back to the environment variable ERBNN_CONV_ENGINE (read per call; default
    auto). All engines give bit-identical results; forcing one this machine lacks raises RuntimeError."""
    if not native_available():
        raise RuntimeError(f"the native extension is not loaded: {_native.LOAD_ERROR}")
    if name is not None and name not in CONV_ENGINES + ("auto",):
        raise ValueError(f"conv engine must be one of {CONV_ENGINES + ('auto',)} or None, got {name!r}")
    _native.set_conv_engine("" if name is None else name)


def get_conv_engine() -> str:
    """The CPU binary-conv engine request in force: "xnor", "int8_vnni", "amx", "onednn_int8" or "auto"."""
    if not native_available():
        raise RuntimeError(f"the native extension is not loaded: {_native.LOAD_ERROR}")
    return _native.get_conv_engine()


def _emu_built() -> bool:
    from . import _emu

    return _emu.built()


def backend_info() -> dict:
    """What was compiled and what runs: native, cpu_isa, cuda_compiled, cuda_archs, torch, version, ..."""
    info = {
        "native": native_available(),
        "backend": get_backend(),
        "cpu_isa": None,
        "detected_cpu_isa": None,
        "amx": False,
        "amx_status": "native extension not loaded",
        "onednn_status": "native extension not loaded",
        "conv_engines": [],
        "cuda_compiled": False,
        "cuda_archs": [],
        "cuda_available": torch.cuda.is_available(),
        "torch": torch.__version__,
        "version": __version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cuda_emu_built": _emu_built(),  # the CUDA emulator library (tests and tools; never loaded here)
    }
    if native_available():
        N = _native
        info.update(cpu_isa=N.cpu_isa(), detected_cpu_isa=N.detected_cpu_isa(), amx=N.amx_available(), amx_status=N.amx_status(),
                    onednn_status=N.onednn_status(),
                    conv_engines=N.conv_engines(), cuda_compiled=N.cuda_compiled(), cuda_archs=N.cuda_archs())
    else:
        info["load_error"] = _native.LOAD_ERROR
    return info


__all__ = ["__version__", "native_available", "backend_info", "set_backend", "get_backend", "use_backend",
           "set_cpu_isa", "set_conv_engine", "get_conv_engine", "functional", "reference", "ops", "baselines", "nn",
           "models", "deploy", "summary"]
