"""Shared by the cuda_emu tests: the emulator's ops, or a skip when the library is not built (a failure
when ERBNN_CUDA_EMU=1 says it must be, as in CI)."""
import os

import pytest

from erbnn_ext import _emu


def emu_ops():
    problem = _emu.load()
    if problem:
        if os.environ.get("ERBNN_CUDA_EMU") == "1":
            pytest.fail(f"ERBNN_CUDA_EMU=1 but the CUDA emulator cannot be loaded: {problem}")
        pytest.skip(f"CUDA emulator not built: {problem}")
    return _emu.ops()
