"""cpu_allocator: glibc's heap trimming turned off so that training steps do not page-fault."""
import os
import subprocess
import sys

import pytest
import torch

from erbnn_ext import cpu_allocator


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="mmap_threshold"):
        cpu_allocator.keep_freed_memory(mmap_threshold=64 << 20)
    with pytest.raises(ValueError, match="trim_threshold"):
        cpu_allocator.keep_freed_memory(trim_threshold=-1)


_SWITCH = """
import os
from erbnn_ext import cpu_allocator as ca
assert ca.keep_freed_memory() is False
assert ca.allocator_state()["reason"] == "ERBNN_KEEP_FREED_MEMORY=0"
assert "defaults" in ca.allocator_line() and "block cache off" in ca.allocator_line()
os.environ["ERBNN_KEEP_FREED_MEMORY"] = "1"
assert ca.keep_freed_memory()
os.environ["ERBNN_KEEP_FREED_MEMORY"] = "0"
assert ca.keep_freed_memory() is False  # applied before: still in force, and still said
assert "keeps freed memory" in ca.allocator_line()
"""


def test_env_switch_turns_it_off():
    env = dict(os.environ, ERBNN_KEEP_FREED_MEMORY="0")
    env.pop("ERBNN_BLOCK_CACHE", None)
    out = subprocess.run([sys.executable, "-c", _SWITCH], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


_FAULTS = """
import resource, sys, torch
from erbnn_ext import cpu_allocator
if sys.argv[1] == "keep":
    assert cpu_allocator.keep_freed_memory() and cpu_allocator.keep_freed_memory()  # idempotent
    assert "keeps freed memory" in cpu_allocator.allocator_line()
def faults(size):  # per call, after a warm-up at this size
    for _ in range(3):
        torch.empty(size).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.empty(size).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
# growing sizes (1, 4, 16, 64 MiB), as a network's first steps: glibc's dynamic thresholds lag behind them, so
# freed tensors at the heap top are trimmed and faulted back in on the next call
faults(1 << 18)
print(faults(1 << 20) + faults(4 << 20) + faults(16 << 20))  # 64 MiB: above any mmap threshold
"""


def _faults_per_call(mode):
    env = {k: v for k, v in os.environ.items() if k != "ERBNN_KEEP_FREED_MEMORY"}
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], env=env, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or cpu_allocator._glibc() is None, reason="glibc only")
def test_repeated_large_allocations_stop_faulting():
    """In a fresh process (the heap's history matters), with the freed memory kept no call faults. Under the
    defaults the 4 and 16 MiB tensors faulted their pages in again on every call in 3 of 4 processes tried
    (about 180 faults per call; the address layout decides); the 64 MiB one, mapped by mmap, always does
    (16384 pages)."""
    assert _faults_per_call("default") >= 16384
    assert _faults_per_call("keep") < 2
