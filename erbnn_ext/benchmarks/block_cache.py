"""Training step with the block cache against malloc alone, side by side in one process.

Per model and method (the ER-BNN model, its float twin), one full training step (train_step.model_step)
timed in alternating rounds: the block cache enabled (cpu_allocator.enable_block_cache) or disabled
(requests pass to malloc, whose freed memory keep_freed_memory() keeps mapped); each round switches the
mode, runs one untimed step (the cache refills after a switch), then --steps timed steps. Per case: the
median step time in each mode and their ratio. (Memory: benchmarks.memory, a fresh process per case.)

    python -m erbnn_ext.benchmarks.block_cache [--models resnet20,resnet18] [--batch 64] [--threads 1]
                                               [--rounds 6] [--steps 3] [--clock thread|wall]
"""
import argparse
import statistics
import time

import torch

from .. import cpu_allocator
from ..cpu_allocator import allocator_line
from .machine import machine_info, machine_line
from .shapes import parse_models
from .timing import CLOCKS
from .train_step import model_step


def compare(step, rounds=6, steps=3, clock="thread"):
    """{"cache_s", "malloc_s", "ratio", "steps"} for step(), the modes alternating by round (the first
    mode rotating), the block cache left enabled."""
    if not cpu_allocator.enable_block_cache():
        raise RuntimeError(f"the block cache is unavailable: {cpu_allocator.allocator_state()['block_cache']}")
    now = CLOCKS[clock] or time.perf_counter  # timing's wall clock: Timer's default, perf_counter
    for _ in range(2):
        step()
    times = {"cache": [], "malloc": []}
    for r in range(rounds):
        for mode in (("cache", "malloc") if r % 2 == 0 else ("malloc", "cache")):
            if mode == "cache":
                cpu_allocator.enable_block_cache()
            else:
                cpu_allocator.disable_block_cache()
            step()
            for _ in range(steps):
                t0 = now()
                step()
                times[mode].append(now() - t0)
    cpu_allocator.enable_block_cache()
    c, m = statistics.median(times["cache"]), statistics.median(times["malloc"])
    return {"cache_s": c, "malloc_s": m, "ratio": c / m, "steps": len(times["cache"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=parse_models, default=["resnet20", "resnet18"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round and mode (default 3)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="thread",
                    help="thread: the calling thread's CPU time (needs --threads 1); wall: elapsed time")
    a = ap.parse_args(argv)
    if a.clock == "thread" and a.threads != 1:
        ap.error("--clock thread measures one thread: use --threads 1 or --clock wall")
    if a.rounds < 1 or a.steps < 1:
        ap.error("--rounds and --steps must be >= 1")
    torch.set_num_threads(a.threads)
    m = machine_info()
    print(f"# training step, block cache against malloc alone, batch {a.batch}\n{machine_line(m)} | load average "
          f"{m['load_avg_start']} on {m['cpu_count']} CPUs\nTiming: {a.clock} clock per step, median of "
          f"{a.rounds * a.steps} steps per mode over {a.rounds} alternating rounds "
          f"| {allocator_line()}")
    print(f"{'model':<10} {'method':<11} {'cache ms':>9} {'malloc ms':>10} {'cache/malloc':>13}")
    for model in a.models:
        for method in ("er_model", "float_twin"):
            r = compare(model_step(model, a.batch, method), a.rounds, a.steps, a.clock)
            print(f"{model:<10} {method:<11} {r['cache_s'] * 1e3:>9.1f} {r['malloc_s'] * 1e3:>10.1f} "
                  f"{r['ratio']:>12.3f}x", flush=True)


if __name__ == "__main__":
    main()
