"""Keep freed heap memory in the process (glibc malloc), so that a CPU training step does not page-fault.

PyTorch's CPU allocator is malloc. With glibc's defaults, freeing the megabytes of a step's activations,
gradients and oneDNN scratch at the top of the heap returns them to the kernel (heap trimming), and the
next step faults every page back in: measured on the 2-core Zen 5, a 16x16x32x32 conv forward took
0.55 ms without faults and 1.7 ms with them (about 730 page faults per call), depending only on where
the allocator happened to place the buffers. An ER layer allocates a few more tensors per step than
nn.Conv2d, so the faults also distort ER-vs-float comparisons. Raising the trim threshold keeps the
freed pages mapped; raising the mmap threshold keeps large tensors on the heap (glibc's dynamic mmap
threshold stops adapting once either is set). The cost: the process keeps up to `trim_threshold` of
freed memory instead of returning it. jemalloc or tcmalloc (LD_PRELOAD) solve the same problem.

erbnn_ext applies this in its training entry points (fit, `erbnn train`) and benchmarks; any program can
call keep_freed_memory() once. ERBNN_KEEP_FREED_MEMORY=0 turns it off everywhere.
"""
import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameter numbers (malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses larger mmap thresholds on 64-bit (HEAP_MAX_SIZE / 2)
_state = {"applied": False, "reason": "not requested"}


def _glibc():
    """libc as a ctypes library when it is glibc (has gnu_get_libc_version and mallopt), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version, libc.mallopt  # noqa: B018 (attribute lookups: glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = _MMAP_THRESHOLD_MAX,
                      large: bool = True) -> bool:
    """Set glibc malloc's trim threshold (bytes of free heap top kept mapped) and mmap threshold (sizes
    served by mmap instead of the heap; at most 32 MiB); large=True serves no allocation by mmap at all.
    Returns True when applied; False where the C library is not glibc, or ERBNN_KEEP_FREED_MEMORY=0 (the
    reason is in allocator_state()). Idempotent."""
    if trim_threshold < 0 or not 0 <= mmap_threshold <= _MMAP_THRESHOLD_MAX:
        raise ValueError(f"need trim_threshold >= 0 and 0 <= mmap_threshold <= {_MMAP_THRESHOLD_MAX}, "
                         f"got {trim_threshold}, {mmap_threshold}")
    if os.environ.get("ERBNN_KEEP_FREED_MEMORY", "1") == "0":
        _state.update(applied=False, reason="ERBNN_KEEP_FREED_MEMORY=0")
        return False
    libc = _glibc()
    if libc is None:
        _state.update(applied=False, reason="the C library is not glibc")
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 and \
        libc.mallopt(_M_TRIM_THRESHOLD, int(min(trim_threshold, 2**31 - 1))) == 1 and \
        (not large or libc.mallopt(_M_MMAP_MAX, 0) == 1)
    _state.update(applied=ok, reason="applied" if ok else "mallopt refused the values",
                  trim_threshold=trim_threshold, mmap_threshold=mmap_threshold, large=large)
    return ok


def allocator_state() -> dict:
    """{"applied": bool, "reason": str, ...}: what keep_freed_memory did in this process."""
    return dict(_state)


def allocator_line() -> str:
    """One line for benchmark headers."""
    s = _state
    if s["applied"]:
        mmap = "no mmap" if s["large"] else f"mmap threshold {s['mmap_threshold'] >> 20} MiB"
        return f"malloc keeps freed memory (trim threshold {s['trim_threshold'] >> 20} MiB, {mmap}; erbnn_ext.cpu_allocator)"
    return f"malloc defaults ({s['reason']})"
