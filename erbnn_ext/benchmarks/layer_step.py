"""One ERBinaryConv2d training step (forward + backward, quantiles and ring buffers included) per
binary layer shape, native vs reference backend, side by side in one process.

    python -m erbnn_ext.benchmarks.layer_step [--model resnet18] [--batch 16] [--threads N]
"""
import argparse

import torch

import erbnn_ext
from erbnn_ext import nn as enn
from erbnn_ext.benchmarks.shapes import MODELS
from erbnn_ext.benchmarks.timing import measure

BACKENDS = ("native", "reference")


def make_step(shape, batch, backend, seed=0):
    """A closure running one training step of an ERBinaryConv2d of this shape on the given backend."""
    g = torch.Generator().manual_seed(seed)
    layer = enn.ERBinaryConv2d(shape.cin, shape.cout, shape.k, shape.stride, shape.padding)
    enn.set_percentile(layer, 0.5)
    x = torch.randn(shape.input_shape(batch), generator=g).requires_grad_()

    def step():
        with erbnn_ext.use_backend(backend):
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).sum().backward()

    return step


def run(model="resnet18", batch=16, threads=None, min_run_time=0.3):
    rows = []
    for shape in MODELS[model]:
        row = {"layer": shape.name, "count": shape.count, "shape": f"{shape.cout}x{shape.cin}x{shape.k}x{shape.k}",
               "input": "x".join(map(str, shape.input_shape(batch)))}
        for backend in BACKENDS:
            row[backend] = measure(make_step(shape, batch, backend), min_run_time=min_run_time,
                                   threads=threads)["time_s"]
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-run-time", type=float, default=0.3)
    args = ap.parse_args(argv)
    rows = run(args.model, args.batch, args.threads, args.min_run_time)
    print(f"ERBinaryConv2d training step (fwd+bwd), {args.model}, batch {args.batch}, "
          f"{args.threads or torch.get_num_threads()} threads; ms per step")
    print(f"{'layer':<16}{'count':>6}{'input':>16}{'native':>10}{'reference':>11}{'speedup':>9}")
    tot = {b: 0.0 for b in BACKENDS}
    for r in rows:
        for b in BACKENDS:
            tot[b] += r[b] * r["count"]
        print(f"{r['layer']:<16}{r['count']:>6}{r['input']:>16}{r['native'] * 1e3:>10.2f}"
              f"{r['reference'] * 1e3:>11.2f}{r['reference'] / r['native']:>8.2f}x")
    print(f"{'TOTAL (x count)':<38}{tot['native'] * 1e3:>10.2f}{tot['reference'] * 1e3:>11.2f}"
          f"{tot['reference'] / tot['native']:>8.2f}x")


if __name__ == "__main__":
    main()
