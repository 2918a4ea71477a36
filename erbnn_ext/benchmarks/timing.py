"""One timing primitive for `erbnn bench` and bench/: torch.utils.benchmark.Timer in this process.

The Timer synchronises the accelerator before it reads the clock, so CUDA work is timed to completion.
It runs the statement in the calling thread with torch's thread count pinned to `threads` (its own
default is 1 thread, which would understate every CPU op: pass the count explicitly).
"""
import logging

import torch

# torch.utils.benchmark imports torch.utils.cpp_extension, which warns about CUDA_HOME on machines
# without a CUDA runtime: noise in every benchmark table, unrelated to what is measured.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402


def measure(fn, *, repeat=None, min_run_time=0.2, threads=None):
    """Time fn() and return {"time_s", "iqr_s", "calls"}.

    repeat=None: Timer.blocked_autorange(min_run_time) (adaptive block size; time_s is the median of the
    blocks' per-call times). repeat=N: Timer.timeit(N), N calls in one block after a short warm-up
    (time_s is their mean, iqr_s 0): the fixed, small count that --quick and --repeat use.
    """
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn},
                            num_threads=threads or torch.get_num_threads())
    if repeat is None:
        m = timer.blocked_autorange(min_run_time=min_run_time)
        calls = m.number_per_run * len(m.raw_times)
    else:
        m = timer.timeit(number=int(repeat))
        calls = int(repeat)
    return {"time_s": float(m.median), "iqr_s": float(m.iqr), "calls": int(calls)}

