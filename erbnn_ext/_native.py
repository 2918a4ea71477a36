"""Loads the compiled extension (erbnn_ext._C), which registers torch.ops.erbnn.*; never raises.

The library has no Python bindings of its own (it is built against the stable CPython ABI): its
process-wide knobs are ops, torch.ops.erbnn._*, wrapped here as plain functions. `_C` keeps the names
the pybind11 module had (`_native._C.set_cpu_isa(...)`) for existing callers.
"""
import types

import torch

try:
    from . import _build_info  # written by setup.py: what the build compiled, against which torch
except ImportError:  # a source tree that was never built
    _build_info = None


def _torch_mismatch():
    """The .so links against one torch's C++ ABI: loading it under another crashes or fails obscurely."""
    built = getattr(_build_info, "TORCH_VERSION", None)
    if built and built.split("+")[0] != torch.__version__.split("+")[0]:
        return (f"erbnn_ext._C was built against torch {built} but torch {torch.__version__} is installed: "
                f"rebuild it (pip install --no-build-isolation --no-deps -e . / make build)")
    return None


LOAD_ERROR = _torch_mismatch()
if LOAD_ERROR is None:
    try:
        from . import _C as _module  # type: ignore[attr-defined]  # noqa: F401  (registers the ops)
    except Exception as exc:  # ImportError, or an undefined symbol from a torch ABI mismatch
        LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def available() -> bool:
    return _C is not None


def _op(name):
    return getattr(torch.ops.erbnn, name)


def cpu_isa() -> str:
    """The CPU code path kernels use now."""
    return _op("_cpu_isa")()


def detected_cpu_isa() -> str:
    return _op("_detected_cpu_isa")()


def set_cpu_isa(name: str) -> str:
    """Cap the CPU code path: scalar, avx2, avx512 or auto. Returns the path now active."""
    return _op("_set_cpu_isa")(name)


def amx_available() -> bool:
    """AMX-INT8 granted by the OS and the tile code's self-test passed (checked once per process)."""
    return _op("_amx_available")()


def amx_status() -> str:
    """Why the amx engine is or is not available (disabled, no AMX, refused grant, failed self-test)."""
    return _op("_amx_status")()


def onednn_status() -> str:
    """Why the onednn_int8 engine is or is not available (torch's oneDNN int8 conv ops, their schema, a
    self-test conv through them; checked once per process)."""
    return _op("_onednn_status")()


def _set_onednn_disabled(disabled: bool) -> None:
    """Tests: make the onednn_int8 engine look absent (or its real state again)."""
    _op("_set_onednn_disabled")(bool(disabled))


def _onednn_schema_problem(schema: str) -> str:
    """Tests: what the onednn_int8 engine says of an op schema string ("" = understood)."""
    return _op("_onednn_schema_problem")(schema)


def _amx_probe_outcome(mode: str) -> str:
    """Tests: the AMX self-test's child-process verdict for a stand-in child (pass, config, block, fault)."""
    return _op("_amx_probe_outcome")(mode)


def _amx_tile_config() -> list:
    """The 64-byte AMX tile configuration the kernel loads."""
    return list(_op("_amx_tile_config")())


def _amx_tile_config_loaded() -> list:
    """AMX hosts: what LDTILECFG loaded from that configuration, read back with STTILECFG."""
    return list(_op("_amx_tile_config_loaded")())


def conv_engines() -> list:
    """CPU binary-conv engines usable on this machine."""
    return list(_op("_conv_engines")())


def set_conv_engine(name: str) -> None:
    """Force the CPU binary-conv engine: xnor, int8_vnni, amx, onednn_int8 or auto; '' defers to ERBNN_CONV_ENGINE."""
    _op("_set_conv_engine")(name)


def get_conv_engine() -> str:
    """The engine request in force (or 'auto')."""
    return _op("_get_conv_engine")()


def _set_amx_disabled(disabled: bool) -> None:
    """Tests: make AMX look absent (or present again)."""
    _op("_set_amx_disabled")(bool(disabled))


def _set_amx_emulated(on: bool) -> None:
    """Tests without AMX hardware: run the amx engine with a scalar TDPBSSD instead of the tiles."""
    _op("_set_amx_emulated")(bool(on))


def _clear_conv_engine_cache() -> None:
    _op("_clear_conv_engine_cache")()


def _conv_engine_choices() -> dict:
    """Auto choices so far: shape key -> engine."""
    return dict(_op("_conv_engine_choices")())


def conv_engine_reasons() -> dict:
    """Auto choices so far: shape key -> why (each candidate's measured time, or why none was timed)."""
    return dict(_op("_conv_engine_reasons")())


def cuda_compiled() -> bool:
    return available() and _op("_cuda_compiled")()


def cuda_archs() -> list:
    """The TORCH_CUDA_ARCH_LIST entries the CUDA kernels were compiled for ([] without CUDA kernels)."""
    return list(getattr(_build_info, "CUDA_ARCHS", [])) if cuda_compiled() else []


_cuda_supported = {}


def cuda_supported(device) -> bool:
    """Whether the CUDA kernels can run on `device` (a CUDA device, index or string): the CUDA runtime
    has an image for it (SASS of its architecture or PTX it can JIT). False without CUDA kernels or a
    GPU. Asked once per device index and cached; no launch, no host sync after the first call."""
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device must be a CUDA device, got {device}")
    if not cuda_compiled() or not torch.cuda.is_available():
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    ok = _cuda_supported.get(index)
    if ok is None:
        ok = _cuda_supported[index] = _op("_cuda_kernel_image_version")(index) >= 0
    return ok


# The pybind11 module's names, for callers that use `_native._C.<name>(...)`.
_C = types.SimpleNamespace(
    cpu_isa=cpu_isa, detected_cpu_isa=detected_cpu_isa, set_cpu_isa=set_cpu_isa, amx_available=amx_available,
    amx_status=amx_status, _amx_tile_config=_amx_tile_config, _amx_probe_outcome=_amx_probe_outcome, _amx_tile_config_loaded=_amx_tile_config_loaded,
    conv_engine_reasons=conv_engine_reasons,
    conv_engines=conv_engines, set_conv_engine=set_conv_engine, get_conv_engine=get_conv_engine,
    _set_amx_disabled=_set_amx_disabled, _set_amx_emulated=_set_amx_emulated,
    onednn_status=onednn_status, _set_onednn_disabled=_set_onednn_disabled,
    _onednn_schema_problem=_onednn_schema_problem,
    _clear_conv_engine_cache=_clear_conv_engine_cache, _conv_engine_choices=_conv_engine_choices,
    cuda_compiled=cuda_compiled) if LOAD_ERROR is None else None
