"""Training-step memory: an ER-BNN model against its float twin, each in a fresh process.

Per model and method (the ER-BNN model, its float twin: nn.Conv2d / nn.Linear in place of each ER layer),
a child process builds the model, an SGD optimizer and one random batch, gives the freed memory back
(release_free_memory()), records its resident memory (start), then runs training steps (forward +
cross-entropy + backward + SGD step) and reports
- peak RSS minus start over the first step, and over the second (after one warm-up step; the kernel's
  peak, VmHWM, is reset in between through /proc/self/clear_refs);
- the bytes of the tensors autograd keeps for the backward (each storage once, weights included),
  counted with saved_tensors_hooks during the second step's forward;
- the bytes in live tensors after the second step's forward less before it (heap_in_use()): the
  tensors at the step's peak, free of the allocator's fragmentation, which makes peak RSS vary from
  process to process (hence --repeat);
- the seconds per step (median of the steps after the second: a coarse figure beside the memory; the
  timing benchmarks are train_step.py's).
Linux only (reads /proc/self/status). keep_freed_memory() (malloc policy and block cache) is applied
as in `erbnn train` unless --no-keep-freed-memory; --no-block-cache keeps the malloc policy only.

    python -m erbnn_ext.benchmarks.memory [--models resnet20,resnet18] [--batch 64] [--threads 1] [--steps 6]
"""
import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

MIB = float(1 << 20)


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes():
    return _status_kib("VmRSS") * 1024


def peak_bytes():
    return _status_kib("VmHWM") * 1024


def reset_peak():
    """Resets the kernel's peak RSS (VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def heap_in_use():
    """Bytes in live CPU tensors, without the freed-but-kept pages and the fragmentation that RSS also
    counts: the block cache's count where it is enabled (its cached blocks are in use for malloc), else
    what malloc has handed out and not had back (glibc >= 2.33), else None."""
    from ..cpu_allocator import block_cache_stats
    stats = block_cache_stats()
    if stats.get("enabled"):
        return stats["allocated"]
    if _MALLINFO2 is None:
        return None
    m = _MALLINFO2()
    return m.uordblks + m.hblkhd


class SavedBytes:
    """Context manager: the bytes of the distinct storages autograd saves for the backward meanwhile."""

    def __enter__(self):
        self.storages = {}

        def pack(t):
            s = t.untyped_storage()
            self.storages[s.data_ptr()] = s.nbytes()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def nbytes(self):
        return sum(self.storages.values())


# er_model: the ER layers as built (lean_train on: packed signs kept for the backward); er_keep: lean_train off
# (the restored y and w_b kept); float_twin: nn.Conv2d / nn.Linear in place of each ER layer
METHODS = ("er_model", "er_keep", "float_twin")


def measure(model_name, method, batch, steps=6, seed=0):
    """In THIS process (call it in a fresh one): the figures of the module docstring, in bytes / seconds."""
    from ..cpu_allocator import allocator_line, release_free_memory
    from .train_step import float_twin, lean_train_off, model_builder
    build, hw = model_builder(model_name)
    torch.manual_seed(seed)
    model = build(num_classes=10).train()
    if method == "float_twin":
        model = float_twin(model)
    elif method == "er_keep":  # the ER layers' steps keep y and w_b themselves
        lean_train_off(model)
    elif method != "er_model":
        raise ValueError(f"method must be er_model, er_keep or float_twin, got {method!r}")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, hw, hw, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    live = {}

    def step(saved=None):
        opt.zero_grad(set_to_none=True)
        if saved is None:
            loss = F.cross_entropy(model(x), y)
        else:
            before = heap_in_use()
            with saved:
                loss = F.cross_entropy(model(x), y)
            after = heap_in_use()
            live["fwd"] = None if before is None else after - before
        loss.backward()
        opt.step()

    # What building the model left freed (the ER model a float twin is made from) is given back first:
    # otherwise the step of the model built second reuses it, and its peak minus start looks smaller.
    gc.collect()
    release_free_memory()
    start = rss_bytes()
    reset_peak()
    step()
    first = peak_bytes() - start
    reset_peak()
    saved = SavedBytes()
    step(saved)
    second = peak_bytes() - start
    times = []
    for _ in range(max(0, steps - 2)):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"model": model_name, "method": method, "batch": batch, "start_bytes": start,
            "peak_first_bytes": first, "peak_bytes": second, "saved_bytes": saved.nbytes,
            "live_bytes": live.get("fwd"),
            "step_s": statistics.median(times) if times else None, "allocator": allocator_line()}


def run_child(model_name, method, batch, threads, steps, keep_freed=True, block_cache=True):
    """measure() in a fresh Python process (this package from the same path); returns its dict."""
    args = [sys.executable, "-m", "erbnn_ext.benchmarks.memory", "--child", method, "--models", model_name,
            "--batch", str(batch), "--threads", str(threads), "--steps", str(steps)]
    if not keep_freed:
        args.append("--no-keep-freed-memory")
    if not block_cache:
        args.append("--no-block-cache")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"memory child {model_name}/{method} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def format_table(rows):
    by = {(r["model"], r["method"]): r for r in rows}
    lines = [f"{'model':<10} {'method':<11} {'peak 1st MiB':>12} {'peak MiB':>9} {'saved MiB':>10} {'live MiB':>9} "
             f"{'step ms':>8}   ratios ER / float: peak 1st, peak, saved, live, step"]
    keys = ("peak_first_bytes", "peak_bytes", "saved_bytes", "live_bytes")
    for (model, method), r in by.items():
        line = (f"{model:<10} {method:<11} {r['peak_first_bytes'] / MIB:>12.1f} {r['peak_bytes'] / MIB:>9.1f} "
                f"{r['saved_bytes'] / MIB:>10.1f} {(r['live_bytes'] or 0) / MIB:>9.1f} "
                f"{(r['step_s'] or 0) * 1e3:>8.1f}")
        f = by.get((model, "float_twin"))
        if method in ("er_model", "er_keep") and f is not None:
            ratios = [r[k] / f[k] if r[k] and f[k] else float("nan") for k in keys]
            if r["step_s"] and f["step_s"]:
                ratios.append(r["step_s"] / f["step_s"])
            line += "   " + ", ".join(f"{v:.3f}x" for v in ratios)
        lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet18", help="comma-separated (default resnet20,resnet18)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--steps", type=int, default=6, help="steps per process (>= 2; the ones after 2 are timed)")
    ap.add_argument("--repeat", type=int, default=1, help="fresh processes per case (the median is reported)")
    ap.add_argument("--no-keep-freed-memory", action="store_true",
                    help="leave glibc malloc's trimming on (default: keep_freed_memory(), as `erbnn train`)")
    ap.add_argument("--no-block-cache", action="store_true",
                    help="keep_freed_memory() without its block cache (malloc's policy only)")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.child:
        # through the environment: the benchmark modules measure() imports apply keep_freed_memory() too
        if a.no_keep_freed_memory:
            os.environ["ERBNN_KEEP_FREED_MEMORY"] = "0"
        if a.no_block_cache:
            os.environ["ERBNN_BLOCK_CACHE"] = "0"
        from ..cpu_allocator import keep_freed_memory
        keep_freed_memory()
        print(json.dumps(measure(a.models, a.child, a.batch, a.steps)))
        return
    from .machine import cpu_model
    import erbnn_ext
    print(f"# training-step memory, batch {a.batch}, {a.threads} thread(s), CPU: {cpu_model()}, torch "
          f"{torch.__version__}, erbnn_ext {erbnn_ext.__version__} ({erbnn_ext.backend_info()['backend']}), "
          f"keep_freed_memory: {not a.no_keep_freed_memory}, block cache: "
          f"{not (a.no_keep_freed_memory or a.no_block_cache)}, median of {a.repeat} process(es) per case")
    rows = []
    for model in a.models.split(","):
        for method in METHODS:
            runs = [run_child(model, method, a.batch, a.threads, a.steps, not a.no_keep_freed_memory,
                              not a.no_block_cache)
                    for _ in range(a.repeat)]
            row = dict(runs[0])
            for k in ("start_bytes", "peak_first_bytes", "peak_bytes", "saved_bytes", "live_bytes", "step_s"):
                vals = [r[k] for r in runs if r[k] is not None]
                row[k] = statistics.median(vals) if vals else None
            rows.append(row)
    print(format_table(rows))
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
