"""GPU figures a user asks for first, in one process on one device:

- memory-bound kernels (restorations, approx_sign) in GB/s against the device's copy bandwidth measured in
  the same run (bytes = one read of the input + one write of the output: what a copy moves);
- binary conv and binary linear against cuDNN / cuBLAS in float16 and bfloat16, on the ImageNet ResNet-18
  binary layer shapes at batch 256 (cuDNN in channels_last with cudnn.benchmark: its best case);
- the two-sided quantile against torch.quantile and torch.kthvalue of the same tensor.

    python -m erbnn_ext.benchmarks.gpu [--batch 256] [--min-time 0.1] [--json FILE] [--device cuda]

`--device cpu` runs the same code on tiny shapes (a smoke test of this module; no figures to quote).
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

import erbnn_ext

from .machine import machine_info
from .shapes import RESNET18_IMAGENET, ConvShape
from .timing import measure

# (batch rows, in features, out features): the classifier of ResNet-18 and two larger square layers.
LINEAR_SHAPES = [(None, 512, 1000), (None, 4096, 4096), (None, 8192, 8192)]
TINY = [ConvShape("tiny", 8, 8, 6), ConvShape("tiny.s2", 8, 16, 6, stride=2)]


def _time(fn, min_time):
    fn()  # warm-up: first-call work (cuDNN autotuning, lazy init) is not what is measured
    return measure(fn, min_run_time=min_time)["time_s"]


def copy_bandwidth(device, numel, min_time):
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    t = _time(lambda: dst.copy_(src), min_time)
    return 2 * src.numel() * src.element_size() / t / 1e9


def memory_bound(device, batch, shapes, min_time, copy_gbs):
    ops = torch.ops.erbnn
    rows = []
    for s in shapes:
        x = torch.randn(s.input_shape(batch), device=device)
        w = torch.randn(s.weight_shape(), device=device)
        mean, sigma = x.mean(), x.std()
        cases = {
            "restore_activation": (x, lambda: ops.restore_activation(x)),
            "restore_activation_fixed": (x, lambda: ops.restore_activation_fixed(x, mean, sigma)),
            "approx_sign": (x, lambda: ops.approx_sign(x)),
            "restore_weight": (w, lambda: ops.restore_weight(w)),
        }
        for op, (t, fn) in cases.items():
            sec = _time(fn, min_time)
            gbs = 2 * t.numel() * t.element_size() / sec / 1e9
            rows.append({"op": op, "layer": s.name, "shape": list(t.shape), "time_s": sec, "GB_s": gbs,
                         "of_copy": gbs / copy_gbs})
    return rows


def conv_rows(device, batch, shapes, min_time):
    ops = torch.ops.erbnn
    half_ok = device.type == "cuda"
    rows = []
    for s in shapes:
        x = torch.randn(s.input_shape(batch), device=device)
        w = torch.randn(s.weight_shape(), device=device)
        st, pd = [s.stride] * 2, [s.padding] * 2
        wp = ops.pack_conv_weight(w)
        cases = {
            "binary_conv2d": lambda: ops.binary_conv2d(x, w, st, pd, [1, 1]),
            "binary_conv2d_packed": lambda: ops.binary_conv2d_packed(x, wp, st, pd, [1, 1]),
        }
        for name, dt in (("cudnn_fp16", torch.float16), ("cudnn_bf16", torch.bfloat16)):
            if dt == torch.float16 and not half_ok:
                continue  # float16 conv on the CPU is not a peer anyone uses
            xc = x.to(dt).contiguous(memory_format=torch.channels_last)
            wc = w.to(dt).contiguous(memory_format=torch.channels_last)
            cases[name] = (lambda xc=xc, wc=wc: F.conv2d(xc, wc, None, s.stride, s.padding))
        macs = s.macs(batch)
        for impl, fn in cases.items():
            sec = _time(fn, min_time)
            rows.append({"layer": s.name, "impl": impl, "batch": batch, "cin": s.cin, "cout": s.cout, "hw": s.hw,
                         "stride": s.stride, "count": s.count, "time_s": sec, "TMACs": macs / sec / 1e12})
    return rows


def linear_rows(device, batch, shapes, min_time):
    rows = []
    for _, k, n in shapes:
        x, w = torch.randn(batch, k, device=device), torch.randn(n, k, device=device)
        cases = {"binary_linear": lambda: torch.ops.erbnn.binary_linear(x, w)}
        for name, dt in (("cublas_fp16", torch.float16), ("cublas_bf16", torch.bfloat16)):
            if dt == torch.float16 and device.type != "cuda":
                continue
            xc, wc = x.to(dt), w.to(dt)
            cases[name] = (lambda xc=xc, wc=wc: F.linear(xc, wc))
        for impl, fn in cases.items():
            sec = _time(fn, min_time)
            rows.append({"m": batch, "k": k, "n": n, "impl": impl, "time_s": sec, "TMACs": batch * k * n / sec / 1e12})
    return rows


QUANTILE_LIMIT = 1 << 24  # torch.quantile refuses larger inputs


def quantile_rows(device, sizes, min_time, p=0.8):
    rows = []
    for n in sizes:
        x = torch.randn(n, device=device)
        k = max(1, int(p * n))
        cases = {"erbnn.two_sided_quantile": lambda: torch.ops.erbnn.two_sided_quantile(x, p),
                 "torch.kthvalue": lambda: torch.kthvalue(x, k)}
        if n <= QUANTILE_LIMIT:
            cases["torch.quantile"] = lambda: torch.quantile(x, p)
        for impl, fn in cases.items():
            rows.append({"n": n, "impl": impl, "time_s": _time(fn, min_time)})
    return rows


def run(device="cuda", batch=256, min_time=0.1, tiny=False):
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("erbnn_ext.benchmarks.gpu: --device cuda needs an NVIDIA GPU; torch sees none")
    if not erbnn_ext.native_available():
        raise RuntimeError(f"the native extension is not loaded: {erbnn_ext.backend_info().get('load_error')}")
    if device.type == "cuda" and not erbnn_ext._native.cuda_supported(device):
        raise RuntimeError(f"the CUDA kernels were not compiled for {torch.cuda.get_device_name(device)} "
                           f"(compiled: {erbnn_ext._native.cuda_archs()})")
    torch.backends.cudnn.benchmark = True
    tiny = tiny or device.type != "cuda"
    shapes = TINY if tiny else RESNET18_IMAGENET
    batch = 2 if tiny else batch
    linear = [(None, 64, 32)] if tiny else LINEAR_SHAPES
    sizes = [1000, 10_000] if tiny else [1 << 20, 1 << 24, 51_380_224]  # the last: layer1 input at batch 256
    copy_gbs = copy_bandwidth(device, 1 << (12 if tiny else 28), min_time)
    with torch.no_grad():
        out = {
            "machine": machine_info(str(device)),
            "batch": batch,
            "copy_GB_s": copy_gbs,
            "memory_bound": memory_bound(device, batch, shapes, min_time, copy_gbs),
            "conv": conv_rows(device, batch, shapes, min_time),
            "linear": linear_rows(device, batch, linear, min_time),
            "quantile": quantile_rows(device, sizes, min_time),
        }
    return out


def summary_lines(res):
    """A few lines: copy bandwidth, the restorations' share of it, binary conv / linear vs the best
    float16/bfloat16 library time (summed over the model's layers), the quantile vs kthvalue."""
    lines = [f"device: {res['machine']['device_name']}; copy bandwidth {res['copy_GB_s']:.0f} GB/s"]
    by_op = {}
    for r in res["memory_bound"]:
        by_op.setdefault(r["op"], []).append(r["of_copy"])
    lines.append("memory-bound kernels, fraction of copy bandwidth (min..max over layers): " + "; ".join(
        f"{op} {min(v):.2f}..{max(v):.2f}" for op, v in by_op.items()))
    total = {}
    for r in res["conv"]:
        total[r["impl"]] = total.get(r["impl"], 0.0) + r["time_s"] * r["count"]
    lines.append(f"binary convs of the model at batch {res['batch']} (ms, layers x count): " + ", ".join(
        f"{k} {1e3 * v:.2f}" for k, v in total.items()))
    for r in res["linear"]:
        if r["impl"] == "binary_linear":
            peers = {p["impl"]: p["time_s"] for p in res["linear"] if (p["k"], p["n"]) == (r["k"], r["n"])}
            lines.append(f"linear {r['m']}x{r['k']}->{r['n']} (ms): " + ", ".join(
                f"{k} {1e3 * v:.3f}" for k, v in peers.items()))
    for n in sorted({r["n"] for r in res["quantile"]}):
        peers = {r["impl"]: r["time_s"] for r in res["quantile"] if r["n"] == n}
        lines.append(f"quantile n={n} (ms): " + ", ".join(f"{k} {1e3 * v:.3f}" for k, v in peers.items()))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m erbnn_ext.benchmarks.gpu", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--min-time", type=float, default=0.1, help="seconds per measurement (blocked_autorange)")
    ap.add_argument("--json", default=None, help="write the full result here")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.min_time <= 0:
        ap.error("--batch and --min-time must be positive")
    try:
        res = run(args.device, args.batch, args.min_time)
    except RuntimeError as exc:
        print(f"erbnn_ext.benchmarks.gpu: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print("\n".join(summary_lines(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
