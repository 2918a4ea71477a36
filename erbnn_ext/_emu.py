"""The CUDA emulator library erbnn_ext._C_emu (docs/kernels.md, "The CUDA emulator"), for tests and tools.

csrc/cuda/*.cu compiled as C++ against csrc/cuda_emu: every CUDA kernel runs on the CPU with CUDA's
thread/warp/block semantics, registered as CPU ops in torch.ops.erbnn_emu (the schemas of torch.ops.erbnn).
Never loaded by `import erbnn_ext`: only what calls load() pays for it.
"""
import contextlib
import glob
import os

import torch

from . import _native

_loaded = None  # None: not tried; "" loaded; else why not


def library_path():
    """The built library's path, or None (not built: ERBNN_CUDA_EMU=0 or no C++20 compiler).
    ERBNN_EMU_LIBRARY names another build of it (tools/emu_mutants.py: a mutated kernel)."""
    if os.environ.get("ERBNN_EMU_LIBRARY"):
        return os.environ["ERBNN_EMU_LIBRARY"]
    found = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_C_emu*.so")))
    return found[0] if found else None


def built() -> bool:
    return library_path() is not None


def load():
    """Loads the library once; returns None when it is loaded, else the reason it cannot be."""
    global _loaded
    if _loaded is None:
        path = library_path()
        mismatch = _native._torch_mismatch()
        if path is None:
            _loaded = "erbnn_ext._C_emu is not built (setup.py skips it with ERBNN_CUDA_EMU=0 or without C++20)"
        elif mismatch:
            _loaded = mismatch
        else:
            try:
                torch.ops.load_library(path)
                _loaded = ""
            except Exception as exc:  # an undefined symbol from a torch ABI mismatch, ...
                _loaded = f"{type(exc).__name__}: {exc}"
    return _loaded or None


def ops():
    """torch.ops.erbnn_emu, loading the library first (RuntimeError if it cannot be)."""
    problem = load()
    if problem:
        raise RuntimeError(problem)
    return torch.ops.erbnn_emu


def set_schedule(name: str) -> str:
    """The fiber schedule: inorder, reverse, ahead, ahead-reverse or random:SEED; returns the previous."""
    return ops()._emu_set_schedule(name)


def get_schedule() -> str:
    return ops()._emu_set_schedule("")


@contextlib.contextmanager
def schedule(name: str):
    prev = set_schedule(name)
    try:
        yield
    finally:
        set_schedule(prev)


@contextlib.contextmanager
def device(sm_count=2, cc=(9, 0)):
    """The fake device's multiprocessor count and compute capability, for the block."""
    prev = ops()._emu_set_device(sm_count, *cc)
    try:
        yield
    finally:
        ops()._emu_set_device(*prev)


def launch_counts() -> dict:
    """Launches per site ("file.cu:line") since the last reset_launch_counts()."""
    return dict(ops()._emu_launch_counts())


def reset_launch_counts() -> None:
    ops()._emu_reset_launch_counts()
