"""Backend selection (api.md): "native" runs torch.ops.erbnn kernels, "reference" the pure-PyTorch twins.

The default comes from ERBNN_BACKEND (default "native"). Asking for "native" without the compiled
extension warns once and runs the reference.
"""
import contextlib
import os
import threading
import warnings

from . import _native

BACKENDS = ("native", "reference")
_state = threading.local()
_default = None
_warned = False


def _check(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def _initial():
    global _default
    if _default is None:
        _default = _check(os.environ.get("ERBNN_BACKEND", "native").strip().lower() or "native")
    return _default


def set_backend(name: str) -> None:
    """Set the backend for this process: "native" or "reference"."""
    global _default
    _default = _check(name)
    _state.__dict__.pop("override", None)


def get_backend() -> str:
    """The backend asked for now (may be "native" even when it falls back)."""
    return getattr(_state, "override", None) or _initial()


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run the enclosed code on backend `name` (this thread only)."""
    _check(name)
    prev = getattr(_state, "override", None)
    _state.override = name
    try:
        yield
    finally:
        _state.override = prev


def native_active() -> bool:
    """True when native kernels should run: native asked for and the extension loaded."""
    global _warned
    if get_backend() != "native":
        return False
    if _native.available():
        return True
    if not _warned:
        _warned = True
        warnings.warn(f"erbnn_ext: native backend requested but the extension did not load "
                      f"({_native.LOAD_ERROR}); using the reference implementation", RuntimeWarning)
    return False
