"""two_sided_quantile (method.md section 3): the native radix select against the ways PyTorch alone
computes it: torch.quantile on each half (what the paper's code does; it sorts, and refuses more than
2^24 elements) and torch.kthvalue on each half (a selection, two per half).

    python -m erbnn_ext.benchmarks.quantile [--sizes 1e5 1e6 1e7] [--device cpu|cuda] [--p 0.8]
"""
import argparse
import math

import torch

from .timing import header, seconds

TORCH_QUANTILE_LIMIT = 2 ** 24


def _halves(x):
    flat = x.reshape(-1)
    return [h for h in (-flat[flat <= 0], flat[flat >= 0]) if h.numel()]


def native(x, p):
    return torch.ops.erbnn.two_sided_quantile(x, p)


def torch_quantile(x, p):
    """torch.quantile on each half; raises ValueError for a half above 2^24 elements (torch refuses)."""
    halves = _halves(x)
    if max(h.numel() for h in halves) > TORCH_QUANTILE_LIMIT:
        raise ValueError("torch.quantile refuses more than 2^24 elements")
    return torch.stack([torch.quantile(h, p) for h in halves]).max()


def torch_kthvalue(x, p):
    """numpy's linear interpolation from torch.kthvalue order statistics of each half."""
    qs = []
    for h in _halves(x):
        n = h.numel()
        pos = (n - 1) * p
        lo = min(int(math.floor(pos)), n - 1)
        hi = min(lo + 1, n - 1)
        v_lo = torch.kthvalue(h, lo + 1).values.double()
        v_hi = torch.kthvalue(h, hi + 1).values.double() if hi != lo else v_lo
        qs.append(v_lo + (pos - lo) * (v_hi - v_lo))
    return torch.stack(qs).max().float()


METHODS = {"native": native, "torch.quantile": torch_quantile, "torch.kthvalue": torch_kthvalue}


def run(sizes=(10 ** 5, 10 ** 6, 10 ** 7), device="cpu", p=0.8, seed=0, min_run_time=0.3):
    """One row per size: {"n", "<method>": ms or None (refused)}."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        x = torch.randn(int(n), generator=gen).to(device)
        row = {"n": int(n)}
        for name, fn in METHODS.items():
            try:
                fn(x, p)  # refusals raise here, before the timer
                row[name] = seconds(lambda: fn(x, p), min_run_time=min_run_time) * 1e3
            except (ValueError, RuntimeError):
                row[name] = None
        rows.append(row)
    return rows


def format_table(rows):
    def cell(v):
        return "refused" if v is None else f"{v:.3f}"

    def speedup(row, name):
        return "-" if row[name] is None else f"{row[name] / row['native']:.1f}x"

    head = (f"{'n':>10} | {'native ms':>10} | {'torch.quantile ms':>17} | {'torch.kthvalue ms':>17} | "
            f"{'vs quantile':>11} | {'vs kthvalue':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['n']:>10} | {cell(r['native']):>10} | {cell(r['torch.quantile']):>17} | "
                     f"{cell(r['torch.kthvalue']):>17} | {speedup(r, 'torch.quantile'):>11} | "
                     f"{speedup(r, 'torch.kthvalue'):>11}")
    return "\n".join(lines)


def main(argv=None):
    import erbnn_ext  # noqa: F401  (loads the extension: registers torch.ops.erbnn)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--p", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header(f"two_sided_quantile, p={args.p}, float32 randn, device={args.device}: ms per call", args.device))
    print(format_table(run([int(s) for s in args.sizes], args.device, args.p)))


if __name__ == "__main__":
    main()
