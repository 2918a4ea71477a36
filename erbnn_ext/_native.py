"""Loads the compiled extension (erbnn_ext._C), which registers torch.ops.erbnn.*; never raises."""
import torch  # noqa: F401  (the extension links against libtorch: import it first)

try:
    from . import _C  # type: ignore[attr-defined]

    LOAD_ERROR = None
except Exception as exc:  # ImportError, or an undefined symbol from a torch ABI mismatch
    _C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def available() -> bool:
    return _C is not None
