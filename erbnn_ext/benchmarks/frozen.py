"""Deployment speed: every paper model frozen (deploy.freeze: packed XNOR convs, BN folded, block tails
fused) against its float32 twin and that twin under bfloat16 autocast (oneDNN; AMX-BF16 where the CPU has
it) at batch 1 and 16, timed side by side in alternating rounds, and per layer the packed binary conv against fp32 and
bf16 F.conv2d, side by side in one process (1 thread unless told otherwise).

    python -m erbnn_ext.benchmarks.frozen [--models resnet20_1w1a ...] [--batches 1 16] [--threads 1]
                                          [--no-layers] [--with-eval] [--min-run-time 0.5]
                                          [--clock wall|thread]

--clock thread (1 thread only) times the calling thread's CPU time: immune to other processes on a
busy machine.
"""
import argparse
import copy

import torch
import torch.nn.functional as F

from erbnn_ext import deploy, models, nn as enn, ops
from erbnn_ext.benchmarks import binary_conv
from erbnn_ext.benchmarks.timing import header, measure_side_by_side

MODELS = ("resnet20_1w1a", "resnet18_1w1a", "vgg_small_1w1a")
LAYER_MODELS = {"resnet20_1w1a": "resnet20", "resnet18_1w1a": "resnet18", "vgg_small_1w1a": "vgg_small"}


def _calibrated(name, seed=0):
    """The model after two training-mode forwards (the layers record activation statistics), in eval."""
    torch.manual_seed(seed)
    model = getattr(models, name)()
    for _ in range(2):
        model(torch.randn(8, 3, 32, 32)).sum().backward()
    return model.eval()


def float_twin(model):
    """The same network with every ER layer replaced by the float layer it extends (same weights)."""
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, (enn.ERBinaryConv2d, enn.ERBinaryLinear)):
            if isinstance(m, enn.ERBinaryConv2d):
                new = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                      m.dilation, bias=m.bias is not None)
            else:
                new = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            new.load_state_dict({k: v for k, v in m.state_dict().items() if k in ("weight", "bias")})
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, new)
    return twin.eval()


def run(name="resnet20_1w1a", batch=16, threads=1, min_run_time=0.5, with_eval=False, clock="wall"):
    """{case: seconds per forward} for one model and batch size: frozen, float32 (the float twin), bfloat16
    (the float twin under torch.autocast bfloat16, as a user would run it) and, with_eval, the eval-mode ER
    model; timed side by side (timing.measure_side_by_side)."""
    model = _calibrated(name)
    twin = float_twin(model)
    cases = {"frozen": (deploy.freeze(model), False), "float32": (twin, False), "bfloat16": (twin, True)}
    if with_eval:
        cases["eval (XNOR)"] = (model, False)
    x = torch.randn(batch, 3, 32, 32)

    def forward(net, bf16):
        def fn():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(x)
        return fn
    times = measure_side_by_side([forward(*c) for c in cases.values()], min_run_time=min_run_time * len(cases),
                                 threads=threads, clock=clock)
    return {label: t["time_s"] for label, t in zip(cases, times)}


def layer_fns(shape, batch):
    """The packed binary conv (the frozen model's op, default epilogue), the same conv chained as in a frozen
    ResNet (packed signs in, floats and the next layer's packed signs out), and F.conv2d in fp32 / bf16."""
    x, w = binary_conv.layer_inputs(shape, batch)
    wp = ops.pack_conv_weight(w)
    xb, wb = x.bfloat16(), w.bfloat16()
    s, p = shape.stride, shape.padding
    shift, scale = torch.tensor([0.1]), torch.rand(shape.cout)
    x_bits = ops.binary_conv2d_bits(x, ops.pack_conv_weight(torch.randn(shape.cin, shape.cin, 1, 1)), 1, 0, 1,
                                    next_shift=shift)[1]
    return {
        "packed": lambda: ops.binary_conv2d_packed(x, wp, (s, s), (p, p), (1, 1), x_shift=shift, out_scale=scale,
                                                   ones_scale=scale),
        "chained": lambda: ops.binary_conv2d_bits(x_bits, wp, (s, s), (p, p), (1, 1), in_channels=shape.cin,
                                                  out_scale=scale, ones_scale=scale, next_shift=shift),
        "fp32": lambda: F.conv2d(x, w, stride=s, padding=p),
        "bf16": lambda: F.conv2d(xb, wb, stride=s, padding=p),
    }


def bench_layers(names, batches, threads, min_time, clock="wall"):
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return binary_conv.bench_layers(tuple(LAYER_MODELS[n] for n in names), batches, min_time, clock=clock,
                                        fns_for=layer_fns)
    finally:
        torch.set_num_threads(prev)


def format_models(results, threads):
    lines = [f"Whole models, {threads} thread(s): ms per forward",
             f"{'model':16s} {'batch':>5s} {'frozen':>10s} {'float32':>10s} {'bf16':>10s} {'vs fp32':>8s} "
             f"{'vs bf16':>8s}"
             + (f" {'eval':>10s}" if any('eval (XNOR)' in r for r in results.values()) else "")]
    for (name, batch), r in results.items():
        line = (f"{name:16s} {batch:5d} {r['frozen'] * 1e3:10.3f} {r['float32'] * 1e3:10.3f} "
                f"{r['bfloat16'] * 1e3:10.3f} {r['float32'] / r['frozen']:7.2f}x {r['bfloat16'] / r['frozen']:7.2f}x")
        if "eval (XNOR)" in r:
            line += f" {r['eval (XNOR)'] * 1e3:10.3f}"
        lines.append(line)
    return "\n".join(lines)


def format_layers(rows, threads):
    lines = [f"Per layer, {threads} thread(s): ms per call (packed = binary_conv2d_packed with the frozen "
             "model's epilogue; chained = binary_conv2d_bits, packed signs in, floats + packed signs out)",
             f"{'model':10s} {'layer':16s} {'n':>3s} {'packed':>9s} {'chained':>9s} {'fp32':>9s} {'bf16':>9s} "
             f"{'vs fp32':>8s}"]
    for r in rows:
        lines.append(f"{r['model']:10s} {r['layer']:16s} {r['batch']:3d} {r['packed'] * 1e3:9.3f} "
                     f"{r['chained'] * 1e3:9.3f} {r['fp32'] * 1e3:9.3f} {r['bf16'] * 1e3:9.3f} "
                     f"{r['fp32'] / r['packed']:7.2f}x")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-run-time", type=float, default=0.5)
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    ap.add_argument("--with-eval", action="store_true", help="also time the eval-mode ER model")
    ap.add_argument("--clock", default="wall", choices=("wall", "thread"))
    args = ap.parse_args(argv)
    print(header("Frozen binary models vs their float32 twins (python -m erbnn_ext.benchmarks.frozen)"))
    print(f"clock={args.clock}")
    results = {(n, b): run(n, b, args.threads, args.min_run_time, args.with_eval, args.clock)
               for n in args.models for b in args.batches}
    print(format_models(results, args.threads))
    if not args.no_layers:
        print(format_layers(bench_layers(args.models, args.batches, args.threads, args.min_run_time / 2,
                                         args.clock), args.threads))


if __name__ == "__main__":
    main()
