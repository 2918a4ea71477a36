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

Kept freed memory still fragments: the small tensors of a step (packed signs, statistics, weight
gradients) are carved out of the holes freed activations leave, so the next activation no longer fits
there and the heap grows (a ResNet-20 step at batch 64 peaked at about 1.9x its live tensors). So
keep_freed_memory() also enables the extension's block cache (csrc/cpu/block_cache.h) as PyTorch's CPU
allocator: a freed block of >= 64 KiB is kept whole for the next request of its size, which a training
step makes again every step; the resident peak then follows the live tensors.

erbnn_ext applies this in its training entry points (fit, `erbnn train`) and benchmarks; any program can
call keep_freed_memory() once. ERBNN_KEEP_FREED_MEMORY=0 turns it all off; ERBNN_BLOCK_CACHE=0 only the
block cache. empty_block_cache() gives the cached blocks back to malloc.
"""
import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameter numbers (malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses larger mmap thresholds on 64-bit (HEAP_MAX_SIZE / 2)
_state = {"applied": False, "reason": "not requested", "block_cache": "not requested"}
BLOCK_CACHE_MIN = 64 << 10  # smaller tensors go to malloc: they are many, and fit the heap's small holes
BLOCK_CACHE_MAX = 1 << 30  # at most this many bytes of unused blocks are kept, as glibc's trim threshold


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
                      large: bool = True, block_cache: bool = True) -> bool:
    """Set glibc malloc's trim threshold (bytes of free heap top kept mapped) and mmap threshold (sizes
    served by mmap instead of the heap; at most 32 MiB); large=True serves no allocation by mmap at all;
    block_cache=True also enables the block cache (enable_block_cache()).
    Returns True when malloc's policy was applied; False where the C library is not glibc, or
    ERBNN_KEEP_FREED_MEMORY=0 (the reasons, also the block cache's, are in allocator_state()). Idempotent."""
    if trim_threshold < 0 or not 0 <= mmap_threshold <= _MMAP_THRESHOLD_MAX:
        raise ValueError(f"need trim_threshold >= 0 and 0 <= mmap_threshold <= {_MMAP_THRESHOLD_MAX}, "
                         f"got {trim_threshold}, {mmap_threshold}")
    if os.environ.get("ERBNN_KEEP_FREED_MEMORY", "1") == "0":
        # what an earlier call applied stays in force (malloc's settings, the cache): the state keeps saying so
        if not _state["applied"]:
            _state["reason"] = "ERBNN_KEEP_FREED_MEMORY=0"
        if _state["block_cache"] != "enabled":
            _state["block_cache"] = "ERBNN_KEEP_FREED_MEMORY=0"
        return False
    if block_cache:
        enable_block_cache()
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


def enable_block_cache(min_block: int = BLOCK_CACHE_MIN, max_cached: int = BLOCK_CACHE_MAX) -> bool:
    """Make the extension's block cache PyTorch's CPU allocator and turn caching on (or set its limits):
    freed CPU tensors of >= min_block bytes keep their block, rounded up to 4 KiB, for the next request
    of that size; at most max_cached bytes of unused blocks are kept. Returns whether it is on; False where
    the native extension is not built, ERBNN_BLOCK_CACHE=0, or another library installed its own CPU
    allocator (the reason is in allocator_state()["block_cache"])."""
    if min_block < 0 or max_cached < 0:
        raise ValueError(f"need min_block >= 0 and max_cached >= 0, got {min_block}, {max_cached}")
    if os.environ.get("ERBNN_BLOCK_CACHE", "1") == "0":
        _state["block_cache"] = "ERBNN_BLOCK_CACHE=0"
        return False
    from . import _native
    if not _native.available():
        _state["block_cache"] = f"the native extension is not loaded ({_native.LOAD_ERROR})"
        return False
    ok = bool(_native._op("_block_cache_enable")(int(min_block), int(max_cached)))
    _state["block_cache"] = _native._op("_block_cache_status")()
    return ok


def _cache_op(name):
    """The block cache's op torch.ops.erbnn.<name>, or None without the native extension."""
    from . import _native
    return _native._op(name) if _native.available() else None


def disable_block_cache() -> None:
    """Stop caching and give the cached blocks back to malloc. The cache stays PyTorch's CPU allocator,
    passing each request to c10's allocation functions: oneDNN frees some memory through whichever CPU
    allocator is installed when it frees it, so the one that allocated it must stay."""
    disable = _cache_op("_block_cache_disable")
    if disable is not None:
        disable()
        _state["block_cache"] = _cache_op("_block_cache_status")()


def empty_block_cache() -> int:
    """Give the block cache's unused blocks back to malloc; returns their bytes (0 without the extension)."""
    empty = _cache_op("_block_cache_empty")
    return 0 if empty is None else int(empty())


def release_free_memory() -> int:
    """Give what the process keeps of freed memory back to the kernel: the block cache's unused blocks to
    malloc, then glibc's free heap pages (malloc_trim). Returns the block cache's bytes released."""
    released = empty_block_cache()
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    return released


def block_cache_stats() -> dict:
    """The block cache's counters: enabled (0/1); allocated and peak_allocated (bytes in live CPU tensors
    allocated since it was first enabled, small ones included); cached (unused blocks kept);
    peak_reserved (allocated + cached); hits and misses (requests of >= min_block served from / not from
    the cache); min_block, max_cached. Empty without the extension."""
    stats = _cache_op("_block_cache_stats")
    return {} if stats is None else dict(stats())


def reset_block_cache_peaks() -> None:
    """Start peak_allocated and peak_reserved again from the current values."""
    reset = _cache_op("_block_cache_reset_peaks")
    if reset is not None:
        reset()


def allocator_state() -> dict:
    """{"applied": bool, "reason": str, ...}: what keep_freed_memory did in this process."""
    return dict(_state)


def allocator_line() -> str:
    """One line for benchmark headers."""
    s = _state
    cache = "block cache on" if s["block_cache"] == "enabled" else f"block cache off ({s['block_cache']})"
    if s["applied"]:
        mmap = "no mmap" if s["large"] else f"mmap threshold {s['mmap_threshold'] >> 20} MiB"
        return (f"malloc keeps freed memory (trim threshold {s['trim_threshold'] >> 20} MiB, {mmap}), {cache}; "
                f"erbnn_ext.cpu_allocator")
    return f"malloc defaults ({s['reason']}), {cache}"
