"""The one timing helper of every benchmark (`erbnn bench`, the `python -m erbnn_ext.benchmarks.*` modules
and their bench/ pytest-benchmark twins), so that figures from different commands are comparable:
torch.utils.benchmark.Timer in this process, the median of blocked_autorange's blocks (or Timer.timeit(N)
for the fixed small counts of --quick / --repeat).

The Timer synchronises the accelerator before it reads the clock, so CUDA work is timed to completion.
It runs the statement in the calling thread with torch's thread count pinned to `threads` (its own
default is 1 thread, which would understate every CPU op: pass the count explicitly). Every command
prints `header()`: the machine, its threads and the load average, which says how quiet the machine was.
"""
import logging
import statistics
import time

import torch

# torch.utils.benchmark imports torch.utils.cpp_extension, which warns about CUDA_HOME on machines
# without a CUDA runtime: noise in every benchmark table, unrelated to what is measured.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

from ..cpu_allocator import allocator_line, keep_freed_memory  # noqa: E402

# Every benchmark runs with freed heap memory kept mapped (cpu_allocator.py): otherwise glibc's heap
# trimming makes a step's page faults, not its arithmetic, decide small layers' times (3x swings).
keep_freed_memory()

# wall: elapsed time. thread: CPU time of the calling thread only; with one thread (every kernel then runs
# in the caller) it is immune to time slicing by other processes on a busy machine.
CLOCKS = {"wall": None, "thread": time.thread_time}


def measure(fn, *, repeat=None, min_run_time=0.2, threads=None, clock="wall"):
    """Time fn() and return {"time_s", "iqr_s", "calls"}.

    repeat=None: Timer.blocked_autorange(min_run_time) (adaptive block size; time_s is the median of the
    blocks' per-call times). repeat=N: Timer.timeit(N), N calls in one block after a short warm-up
    (time_s is their mean, iqr_s 0): the fixed, small count that --quick and --repeat use.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    threads = threads or torch.get_num_threads()
    if clock == "thread" and threads != 1:
        raise ValueError("clock='thread' measures one thread: pass threads=1 (or torch.set_num_threads(1))")
    kw = {"timer": CLOCKS[clock]} if CLOCKS[clock] else {}
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, **kw)
    if repeat is None:
        m = timer.blocked_autorange(min_run_time=min_run_time)
        calls = m.number_per_run * len(m.raw_times)
    else:
        m = timer.timeit(number=int(repeat))
        calls = int(repeat)
    return {"time_s": float(m.median), "iqr_s": float(m.iqr), "calls": int(calls)}


def measure_side_by_side(fns, *, rounds=5, repeat=None, min_run_time=0.2, threads=None, clock="wall"):
    """Time several fns in alternation: `rounds` rounds, each running measure() on every fn in turn with
    min_run_time / rounds, the order rotated from round to round; per fn, time_s is the median of its
    rounds' medians and round_s those medians in round order (paired_ratio pairs them). Slow drifts of the
    machine (frequency, other processes, cache state) then hit every fn alike, so their ratios stay fair.
    With repeat (the fixed small counts of --quick), or for a single fn, one measure() per fn instead."""
    if repeat is not None or len(fns) == 1:
        return [measure(fn, repeat=repeat, min_run_time=min_run_time, threads=threads, clock=clock) for fn in fns]
    per = [[] for _ in fns]
    for k in range(rounds):
        for j in range(len(fns)):
            i = (j + k) % len(fns)  # rotated: no fn always runs first (after the previous case's last)
            per[i].append(measure(fns[i], min_run_time=min_run_time / rounds, threads=threads, clock=clock))
    out = []
    for runs in per:
        in_order = [r["time_s"] for r in runs]
        times = sorted(in_order)
        out.append({"time_s": times[len(times) // 2], "iqr_s": times[-1] - times[0], "round_s": in_order,
                    "calls": sum(r["calls"] for r in runs), "rounds": rounds})
    return out


def paired_ratio(a: dict, b: dict) -> float:
    """a's time over b's, two measure_side_by_side results: the median of the per-round ratios where both
    have them (a drift of the machine between rounds cancels in each pair), else time_s / time_s."""
    ra, rb = a.get("round_s"), b.get("round_s")
    if ra and rb and len(ra) == len(rb):
        return statistics.median(x / y for x, y in zip(ra, rb))
    return a["time_s"] / b["time_s"]


def seconds(fn, **kw) -> float:
    """measure(fn, **kw)["time_s"]: median seconds per call."""
    return measure(fn, **kw)["time_s"]


def header(what: str, device="cpu") -> str:
    """The first lines of a benchmark's output: what was timed, how, and on which (how busy) machine."""
    from .machine import machine_info, machine_line
    m = machine_info(device)
    return (f"{what}\n{machine_line(m)} | load average {m['load_avg_start']} on {m['cpu_count']} CPUs\n"
            f"Timing: torch.utils.benchmark.Timer.blocked_autorange, median per call (erbnn_ext.benchmarks.timing)"
            f" | {allocator_line()}")
