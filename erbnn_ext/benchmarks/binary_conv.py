"""Binary conv against float conv on the binary 3x3 layers of ResNet-18 / ResNet-20 / VGG-Small (shapes.py).

Two views of the same measured thing, same threads, one process:
- `erbnn bench`'s conv section (cases()): functional.binary_conv2d (packs its float inputs on every call;
  the XNOR-popcount kernel when ops.has_kernel("binary_conv2d", device) and the native backend is
  active, else the reference: sign + float32 conv) against F.conv2d in float32 and bfloat16 on the same
  +-1 values already in their dtype;
- per layer and batch (bench_layers(), `python -m erbnn_ext.benchmarks.binary_conv`): the deploy path on
  pre-packed weights (binary_conv2d_packed) and the full op, against F.conv2d fp32 / bf16; and the CPU
  microkernel's bit-MAC/s against the ~1.2 T bit-MAC/s per core practical roofline of kernels.md.

    python -m erbnn_ext.benchmarks.binary_conv [--models resnet18 ...] [--batches 1 16] [--threads N]
"""
import argparse

import torch
import torch.nn.functional as F

from .. import functional as EF, ops
from .._backend import native_active, use_backend
from .shapes import MODELS, ConvShape
from .timing import CLOCKS, header, seconds

ROOFLINE_BIT_MACS_PER_CORE = 1.2e12  # kernels.md: register-blocked XOR -> VPOPCNTQ -> VPADDQ, one core

# ------------------------------------------------------------------------------- `erbnn bench` conv section
METHODS = ("binary_conv2d", "conv2d_fp32", "conv2d_bf16")
LABELS = {"binary_conv2d": "binary_conv2d", "conv2d_fp32": "F.conv2d fp32", "conv2d_bf16": "F.conv2d bf16"}


def binary_backend(device) -> str:
    """Which implementation functional.binary_conv2d runs on this device."""
    with use_backend("native"):
        if not native_active():
            return "reference (native not loaded)"
    return "native" if ops.has_kernel("binary_conv2d", torch.device(device).type) else "reference (no kernel yet)"


def make_fn(method, shape, w, x):
    """The callable timed for one method on one layer's weights w and activations x."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    conv = dict(stride=shape.stride, padding=shape.padding)
    if method == "binary_conv2d":
        def run():
            with use_backend("native"), torch.no_grad():
                EF.binary_conv2d(x, w, **conv)
        return run
    dtype = torch.float32 if method == "conv2d_fp32" else torch.bfloat16
    xs, ws = torch.sign(x).to(dtype), torch.sign(w).to(dtype)

    def run():
        with torch.no_grad():
            F.conv2d(xs, ws, **conv)
    return run


def cases(models, batch, device, methods=METHODS):
    """Yield (row, fn) for every model x layer x method (`erbnn bench`'s conv section)."""
    from .overhead import make_inputs
    for model in models:
        for shape in MODELS[model]:
            w, x, _, _ = make_inputs(shape, batch, device)
            for method in methods:
                row = {"section": "conv", "model": model, "layer": shape.name, "count": shape.count,
                       "weight_shape": list(shape.weight_shape()), "input_shape": list(shape.input_shape(batch)),
                       "batch": batch, "stride": shape.stride, "padding": shape.padding,
                       "macs": shape.macs(batch), "method": method, "label": LABELS[method],
                       "backend": binary_backend(device) if method == "binary_conv2d" else "pytorch",
                       "device": str(device)}
                if method == "binary_conv2d" and torch.device(device).type == "cpu":
                    row["engine_key"] = engine_key(shape)
                yield row, make_fn(method, shape, w, x)


def engine_key(shape: ConvShape) -> str:
    """The key under which the CPU conv engine's auto choice for this layer is recorded."""
    k, s, p = shape.k, shape.stride, shape.padding
    return conv_engine_key(shape.cin, shape.hw, shape.hw, shape.cout, (k, k), (s, s), (p, p), (1, 1))


def conv_engine_key(c, h, w, o, kernel, stride, padding, dilation) -> str:
    """The shape key of the native engine choice (csrc/cpu/conv_engine.cpp, conv_engine_key): the conv's
    geometry without the batch size."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    return f"C{c} H{h} W{w} O{o} k{kh}x{kw} s{sh},{sw} p{ph},{pw} d{dh},{dw}"


def engine_of(key):
    """(engine, why) the CPU binary conv of this shape key runs on now: the auto choice and its timings,
    or the forced engine; (None, "") without the native extension or before the shape has run."""
    import erbnn_ext
    if not erbnn_ext.native_available():
        return None, ""
    N = erbnn_ext._native
    if erbnn_ext.get_conv_engine() != "auto":
        return erbnn_ext.get_conv_engine(), "forced (ERBNN_CONV_ENGINE / set_conv_engine)"
    return N._conv_engine_choices().get(key), N.conv_engine_reasons().get(key, "")


def add_engines(rows):
    """Fill each CPU binary_conv2d row's engine (and why) from the auto choices recorded in this process,
    or the forced engine (engine_of)."""
    import erbnn_ext
    if not erbnn_ext.native_available():
        return
    for r in rows:
        key = r.pop("engine_key", None)
        if key is not None:
            engine, why = engine_of(key)
            r["engine"], r["engine_why"] = engine or "?", why


# ---------------------------------------------------------------------------------- per layer and batch
def layer_inputs(shape: ConvShape, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.input_shape(batch), generator=g)
    w = torch.randn(shape.weight_shape(), generator=g)
    return x, w


def layer_fns(shape: ConvShape, batch):
    """name -> zero-argument callable, for one layer at one batch size."""
    x, w = layer_inputs(shape, batch)
    wp = ops.pack_conv_weight(w)
    xb, wb = x.bfloat16(), w.bfloat16()
    s, p = shape.stride, shape.padding
    return {
        "binary_packed": lambda: ops.binary_conv2d_packed(x, wp, s, p),
        "binary_full": lambda: ops.binary_conv2d(x, w, (s, s), (p, p), (1, 1)),
        "fp32": lambda: F.conv2d(x, w, stride=s, padding=p),
        "bf16": lambda: F.conv2d(xb, wb, stride=s, padding=p),
    }


def bench_layers(models=("resnet18", "resnet20", "vgg_small"), batches=(1, 16), min_time=0.2, clock="wall",
                 fns_for=None, extra=None):
    """One row per (model, layer shape, batch): the time of each callable of fns_for(shape, batch)
    (default layer_fns; a None callable gives None), plus the fields of extra(shape, batch) if given."""
    fns_for = fns_for or layer_fns
    rows = []
    with torch.no_grad():
        for model in models:
            for shape in MODELS[model]:
                for batch in batches:
                    times = {k: (seconds(fn, min_run_time=min_time, clock=clock) if fn else None)
                             for k, fn in fns_for(shape, batch).items()}
                    rows.append(dict(model=model, layer=shape.name, count=shape.count, batch=batch,
                                     macs=shape.macs(batch), **times, **(extra(shape, batch) if extra else {})))
    return rows


def model_totals(rows):
    """Per (model, batch): layer times weighted by how many layers have each shape."""
    out = {}
    for r in rows:
        key = (r["model"], r["batch"])
        acc = out.setdefault(key, {k: 0.0 for k in ("binary_packed", "binary_full", "fp32", "bf16", "macs")})
        for k in acc:
            acc[k] += r[k] * r["count"]
    return out


def microkernel(threads=1, c=512, o_pair=(256, 512), hw=16, batch=4, min_time=0.5, clock="wall"):
    """Bit-MAC/s of the popcount microkernel (+ its epilogue), by differencing two runs that differ only in
    the number of output channels: packing and im2col cost the same in both and cancel."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch, c, hw, hw)
        ts = []
        for o in o_pair:
            wp = ops.pack_conv_weight(torch.randn(o, c, 3, 3))
            ts.append(seconds(lambda: ops.binary_conv2d_packed(x, wp, 1, 1), min_run_time=min_time,
                              clock=clock if threads == 1 else "wall"))
        bit_macs = batch * hw * hw * (o_pair[1] - o_pair[0]) * c * 9
        # Noise larger than the difference (a busy machine) gives no rate rather than a wrong one.
        rate = bit_macs / (ts[1] - ts[0]) if ts[1] > ts[0] * 1.2 else float("nan")
    finally:
        torch.set_num_threads(prev)
    return dict(threads=threads, bit_macs_per_s=rate, roofline=ROOFLINE_BIT_MACS_PER_CORE * threads,
                fraction_of_roofline=rate / (ROOFLINE_BIT_MACS_PER_CORE * threads))


def format_tables(rows, micro, clock="wall"):
    lines = [header(f"Binary conv per layer (ms per call; clock={clock})"),
             f"{'model':10s} {'layer':18s} {'n':>3s} {'packed ms':>10s} {'full ms':>9s} {'fp32 ms':>9s} "
             f"{'bf16 ms':>9s} {'x fp32':>7s} {'x bf16':>7s} {'Tbit-MAC/s':>10s}"]
    for r in rows:
        lines.append(f"{r['model']:10s} {r['layer']:18s} {r['batch']:3d} {r['binary_packed'] * 1e3:10.3f} "
                     f"{r['binary_full'] * 1e3:9.3f} {r['fp32'] * 1e3:9.3f} {r['bf16'] * 1e3:9.3f} "
                     f"{r['fp32'] / r['binary_packed']:7.1f} {r['bf16'] / r['binary_packed']:7.1f} "
                     f"{r['macs'] / r['binary_packed'] / 1e12:10.2f}")
    lines.append("model totals (layers weighted by count):")
    for (model, batch), t in model_totals(rows).items():
        lines.append(f"  {model:10s} batch {batch:3d}: packed {t['binary_packed'] * 1e3:8.3f} ms, full "
                     f"{t['binary_full'] * 1e3:8.3f} ms, fp32 {t['fp32'] * 1e3:8.3f} ms, bf16 {t['bf16'] * 1e3:8.3f} ms"
                     f" -> {t['fp32'] / t['binary_packed']:.1f}x fp32, {t['bf16'] / t['binary_packed']:.1f}x bf16")
    for m in micro:
        lines.append(f"microkernel, {m['threads']} thread(s): {m['bit_macs_per_s'] / 1e12:.2f} T bit-MAC/s = "
                     f"{100 * m['fraction_of_roofline']:.0f}% of the {m['roofline'] / 1e12:.1f} T roofline")
    return "\n".join(lines)


def parse_layer_bench_args(description, argv=None):
    """The options shared by the per-layer conv benchmarks (this module and engines.py); applies --threads."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet20", "vgg_small"], choices=sorted(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="thread: CPU time of the calling thread (needs --threads 1; robust on a busy machine)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.clock == "thread" and torch.get_num_threads() != 1:
        ap.error("--clock thread needs --threads 1")
    return a


def main(argv=None):
    a = parse_layer_bench_args(__doc__.splitlines()[0], argv)
    rows = bench_layers(a.models, a.batches, a.min_time, a.clock)
    micro = [microkernel(1, clock=a.clock)]
    if torch.get_num_threads() > 1:
        micro.append(microkernel(torch.get_num_threads()))
    print(format_tables(rows, micro, a.clock))


if __name__ == "__main__":
    main()
