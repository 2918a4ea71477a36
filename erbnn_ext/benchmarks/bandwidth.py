"""Memory-bandwidth check of the restoration kernels and the quantile (the goal: each at >= 70%
of the bandwidth limit of its passes), on tensors larger than the caches.

Each kernel's median time (torch.utils.benchmark blocked_autorange) is set against `y.copy_(x)` of the
same size timed in the same run: copy moves 2 tensor-passes (read + write), so a kernel whose
algorithm needs P tensor-passes (reads and writes of an input-sized tensor, statistics passes included)
cannot beat P/2 copy times. The table prints ms, P, that limit and the achieved fraction of it. The
`clone` row shows what a fresh output tensor costs on top (every kernel here allocates one): under glibc's
defaults a 100 MB tensor is mapped afresh on every allocation and its first touch faults page by page,
which can cost more than the kernel (47 ms against copy_'s 4.3 ms, measured); the benchmarks run with
erbnn_ext.cpu_allocator's policy (freed memory reused, no mmap), which the header states, as does
PyTorch's THP_MEM_ALLOC_ENABLE.

    python -m erbnn_ext.benchmarks.bandwidth --threads 2 [--size-mb 100] [--dtype float32] [--only q]
"""
import argparse
import math
import os

import torch

from erbnn_ext.benchmarks.timing import measure
from erbnn_ext.cpu_allocator import allocator_line

OPS = torch.ops.erbnn


def _weight_shape(numel):
    """A conv weight [O, 512, 3, 3] of about numel elements."""
    return (max(1, numel // 4608), 512, 3, 3)


def _activation_shape(numel):
    """An activation [32, C, 112, 112] of about numel elements."""
    return (32, max(1, numel // (32 * 112 * 112)), 112, 112)


def cases(numel, dtype, device):
    """(name, ideal tensor-passes, fn) of every kernel measured, on about numel elements."""
    f64 = dict(dtype=torch.float64, device=device)
    w = torch.randn(_weight_shape(numel), dtype=dtype, device=device)
    x = torch.randn(_activation_shape(numel), dtype=dtype, device=device)
    gw, gx = torch.randn_like(w), torch.randn_like(x)
    _, wm, wa = OPS.restore_weight(w)
    _, xm, xs, xr = OPS.restore_activation(x)
    b = torch.tensor(0.5, dtype=torch.float32 if dtype != torch.float64 else torch.float64, device=device)
    p = torch.tensor(0.8, **f64)
    wq = [torch.zeros(8, **f64), torch.zeros((), dtype=torch.int64, device=device), torch.ones((), **f64)]
    xq = wq + [torch.zeros(8, **f64), torch.zeros((), dtype=torch.int64, device=device),
               torch.zeros(8, **f64), torch.zeros((), dtype=torch.int64, device=device)]
    wq = [t.clone() for t in wq]
    # Passes: a read or a write of one input-sized tensor. Statistics passes count.
    return [
        ("restore_weight", 3, lambda: OPS.restore_weight(w)),
        ("restore_weight backward", 5, lambda: OPS._restore_weight_backward(gw, w, wm, wa, b)),
        ("restore_weight_train", 4, lambda: OPS.restore_weight_train(w, p, *wq, 0.1)),
        ("restore_activation", 3, lambda: OPS.restore_activation(x)),
        ("restore_activation backward", 5, lambda: OPS._restore_activation_backward(gx, x, xm, xs, xr, b)),
        ("restore_activation_train", 4, lambda: OPS.restore_activation_train(x, p, *xq, 0.1)),
        ("restore_activation_fixed", 2, lambda: OPS.restore_activation_fixed(x, xm, xs)),
        ("restore_activation_fixed backward", 3, lambda: OPS._restore_activation_fixed_backward(gx, x, xm, xs, b)),
        ("approx_sign", 2, lambda: OPS.approx_sign(x)),
        ("approx_sign backward", 3, lambda: OPS._approx_sign_backward(gx, x, b)),
        ("two_sided_quantile", 2, lambda: OPS.two_sided_quantile(x, 0.8)),
    ]


def run(size_mb=100.0, threads=2, dtype=torch.float32, device="cpu", min_run_time=1.0, only=None):
    """Rows {name, ms, passes, limit_ms, fraction}; the first row is copy_ itself."""
    torch.set_num_threads(threads)
    numel = int(size_mb * 1e6) // torch.tensor([], dtype=dtype).element_size()
    src = torch.randn(numel, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    copy_s = measure(lambda: dst.copy_(src), min_run_time=min_run_time, threads=threads)["time_s"]
    rows = [dict(name="copy_ (reference)", ms=copy_s * 1e3, passes=2, limit_ms=copy_s * 1e3, fraction=1.0)]
    # What allocating a fresh output costs (the kernels all do; the first touch of its pages faults).
    clone_s = measure(lambda: src.clone(), min_run_time=min_run_time, threads=threads)["time_s"]
    rows.append(dict(name="clone (allocates its output)", ms=clone_s * 1e3, passes=2, limit_ms=copy_s * 1e3,
                     fraction=copy_s / clone_s))
    del src, dst
    for name, passes, fn in cases(numel, dtype, device):
        if only and not any(o in name for o in only):
            continue
        fn()  # warm-up: first-touch allocations
        t = measure(fn, min_run_time=min_run_time, threads=threads)["time_s"]
        limit = passes * copy_s / 2
        rows.append(dict(name=name, ms=t * 1e3, passes=passes, limit_ms=limit * 1e3, fraction=limit / t))
    return rows


def format_table(rows, header):
    lines = [header, f"{'kernel':36s} {'ms':>9s} {'passes':>6s} {'limit ms':>9s} {'of limit':>8s}"]
    for r in rows:
        lines.append(f"{r['name']:36s} {r['ms']:9.2f} {r['passes']:6d} {r['limit_ms']:9.2f} "
                     f"{100 * r['fraction']:7.0f}%")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m erbnn_ext.benchmarks.bandwidth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size-mb", type=float, default=100.0, help="bytes of each input tensor, in MB (1e6)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-time", type=float, default=1.0, help="blocked_autorange min_run_time per kernel, s")
    ap.add_argument("--only", nargs="*", help="measure only kernels whose name contains one of these")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    rows = run(args.size_mb, args.threads, dtype, args.device, args.min_time, args.only)
    header = (f"{args.size_mb:g} MB {args.dtype} tensors, {args.threads} threads, {args.device}; "
              f"copy_ {2 * args.size_mb / rows[0]['ms']:.1f} GB/s read+write; limit = passes/2 x copy_ time; "
              f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; {allocator_line()}")
    print(format_table(rows, header))
    kernels = rows[2:]
    geo = math.exp(sum(math.log(r["fraction"]) for r in kernels) / max(1, len(kernels)))
    print(f"geometric mean of the fractions: {100 * geo:.0f}%")
    return rows


if __name__ == "__main__":
    main()
