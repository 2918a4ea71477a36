"""CPU binary-conv engines per layer: the XNOR-popcount engine, the +-1 int8 GEMM engines
(AVX512-VNNI; AMX where the CPU has it), torch's oneDNN int8 conv as an engine (onednn_int8), the engine
the auto rule picks (auto/fast: auto against the fastest engine, the two timed again side by side),
against F.conv2d in float32 and bfloat16 and torch's own int8 quantized conv2d (the peer: x86/fbgemm/onednn
backend on +-1 tensors quantized to quint8 x qint8, scale 1; its input quantization is not timed).
onednn_qconv is the call the onednn_int8 engine makes, alone (u8 input already made, float output, no
epilogue): onednn_int8 - onednn_qconv is the engine's input pass and epilogue. All binary rows run
binary_conv2d_packed on pre-packed weights (the deploy path), same threads, one process.

    python -m erbnn_ext.benchmarks.engines [--models resnet18 ...] [--batches 1 16] [--threads N]
                                           [--clock wall|thread]
"""

import torch
import torch.nn.functional as F

import erbnn_ext

from .. import ops
from . import binary_conv
from .binary_conv import layer_inputs, parse_layer_bench_args
from .timing import header, measure_side_by_side, paired_ratio
from .shapes import MODELS, ConvShape


def quantized_engine():
    """torch's best int8 CPU backend here, or None."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn"):
        if name in engines:
            return name
    return None


def int8_peer(x, w, stride, padding):
    """Zero-argument callable: torch.ops.quantized.conv2d on sign(x) (quint8, zero point 128) and sign(w)
    (qint8), scale 1, output scale large enough for the +-C*k*k range."""
    qeng = quantized_engine()
    if qeng is None:
        return None
    torch.backends.quantized.engine = qeng
    xs = torch.where(x >= 0, 1.0, -1.0).contiguous(memory_format=torch.channels_last)
    ws = torch.where(w >= 0, 1.0, -1.0)
    xq = torch.quantize_per_tensor(xs, 1.0, 128, torch.quint8)
    wq = torch.quantize_per_tensor(ws, 1.0, 0, torch.qint8)
    packed = torch.ops.quantized.conv2d_prepack(wq, None, [stride] * 2, [padding] * 2, [1, 1], 1)
    out_scale = 2.0 * w[0].numel() / 255.0
    return lambda: torch.ops.quantized.conv2d(xq, packed, out_scale, 128)


def onednn_qconv(x, w, stride, padding):
    """Zero-argument callable: onednn::qconv2d_pointwise as the onednn_int8 engine calls it (u8 {0, 2}
    channels-last input with zero point 1, +-1 int8 weights prepacked, float32 output), or None."""
    if "onednn_int8" not in erbnn_ext.backend_info()["conv_engines"]:
        return None
    xu = (torch.where(x >= 0, 2, 0).to(torch.uint8)).contiguous(memory_format=torch.channels_last)
    wi = torch.where(w >= 0, 1, -1).to(torch.int8)
    O = w.shape[0]
    scales, zps = torch.ones(O), torch.zeros(O, dtype=torch.long)
    geo = ([stride] * 2, [padding] * 2, [1, 1])
    packed = torch.ops.onednn.qconv_prepack(wi, scales, 1.0, 1, *geo, 1, None)
    return lambda: torch.ops.onednn.qconv2d_pointwise(xu, 1.0, 1, packed, scales, zps, None, *geo, 1, 1.0, 0,
                                                      torch.float32, "none", [], "")


def layer_fns(shape: ConvShape, batch):
    """name -> zero-argument callable (None where unavailable), for one layer at one batch size."""
    x, w = layer_inputs(shape, batch)
    wp = ops.pack_conv_weight(w)
    xb, wb = x.bfloat16(), w.bfloat16()
    s, p = shape.stride, shape.padding
    engines = erbnn_ext.backend_info()["conv_engines"]

    def forced(name):
        if name not in engines:
            return None

        def run():
            erbnn_ext.set_conv_engine(name)
            try:
                return ops.binary_conv2d_packed(x, wp, s, p)
            finally:
                erbnn_ext.set_conv_engine(None)
        return run

    def auto():
        erbnn_ext.set_conv_engine("auto")
        try:
            return ops.binary_conv2d_packed(x, wp, s, p)
        finally:
            erbnn_ext.set_conv_engine(None)

    return {
        "xnor": forced("xnor"),
        "int8_vnni": forced("int8_vnni"),
        "amx": forced("amx"),
        "onednn_int8": forced("onednn_int8"),
        "auto": auto,
        "fp32": lambda: F.conv2d(x, w, stride=s, padding=p),
        "bf16": lambda: F.conv2d(xb, wb, stride=s, padding=p),
        "torch_int8": int8_peer(x, w, s, p),
        "onednn_qconv": onednn_qconv(x, w, s, p),
    }


def _recorded(table, shape):
    prefix = (f"C{shape.cin} H{shape.hw} W{shape.hw} O{shape.cout} k{shape.k}x{shape.k} "
              f"s{shape.stride},{shape.stride} ")
    hits = [v for k, v in table.items() if k.startswith(prefix)]
    return hits[-1] if hits else "?"


def auto_choice(shape, batch):
    """The engine auto chose for this layer, and why (after the layer ran under auto; any batch)."""
    N = erbnn_ext._native
    return {"chosen": _recorded(N._conv_engine_choices(), shape), "why": _recorded(N.conv_engine_reasons(), shape)}


CONV_ENGINES = ["xnor", "int8_vnni", "amx", "onednn_int8"]


def fastest_engine(row):
    """The forced engine with the least time in a row."""
    return min((c for c in CONV_ENGINES if row.get(c) is not None), key=lambda c: row[c])


def pair_auto(rows, min_time=0.2, clock="wall", rounds=7):
    """Adds to each row auto_vs_fastest: auto's time over the fastest forced engine's, the two timed again in
    alternating rounds (timing.measure_side_by_side; the median of the per-round ratios). Separate
    timings of the same kernel differ by the machine's noise (on a shared 2-core VM up to 1.1x, once 1.7x), which the
    10% goal on auto cannot tell from a wrong choice; paired rounds cancel the drift."""
    shapes = {(m, s.name): s for m in dict.fromkeys(r["model"] for r in rows) for s in MODELS[m]}
    with torch.no_grad():
        for r in rows:
            fast = fastest_engine(r)
            fns = layer_fns(shapes[(r["model"], r["layer"])], r["batch"])
            # 2 * rounds * min_time per case: a round's measurement must span many calls of a 0.3 ms layer
            auto, forced = measure_side_by_side([fns["auto"], fns[fast]], rounds=rounds,
                                                min_run_time=2 * rounds * min_time, clock=clock)
            r["auto_vs_fastest"] = paired_ratio(auto, forced)
    return rows


def bench_layers(models=("resnet18", "resnet20", "vgg_small"), batches=(1, 16), min_time=0.2, clock="wall"):
    rows = binary_conv.bench_layers(models, batches, min_time, clock, fns_for=layer_fns, extra=auto_choice)
    return pair_auto(rows, min_time, clock)

COLUMNS = CONV_ENGINES + ["auto", "fp32", "bf16", "torch_int8", "onednn_qconv"]


def total(rows, col):
    """Sum over the rows of col, each layer shape weighted by how many layers of the model have it."""
    if any(r.get(col) is None for r in rows):
        return None
    return sum(r[col] * r["count"] for r in rows)


def auto_over_fastest(rows):
    """The largest ratio over the rows of auto's time to the fastest forced engine's: the paired figure
    (pair_auto) where a row has it, else the two columns' ratio."""
    return max(r.get("auto_vs_fastest") or r["auto"] / r[fastest_engine(r)] for r in rows)


def format_table(rows, clock="wall"):
    info = erbnn_ext.backend_info()
    ms = lambda v: f"{v * 1e3:9.3f}" if v is not None else f"{'-':>9s}"
    lines = [header(f"Binary-conv engines per layer (ms per call; clock={clock})"), f"isa={info['cpu_isa']}  engines="
             f"{','.join(info['conv_engines'])}  torch int8 backend={quantized_engine()}  (times in ms)",
             f"{'model':10s} {'layer':18s} {'n':>3s} " + " ".join(f"{c:>9s}" for c in COLUMNS)
             + f" {'chosen':>10s} {'auto/fast':>9s}"]
    for r in rows:
        pair = f"{r['auto_vs_fastest']:8.2f}x" if r.get("auto_vs_fastest") else f"{'-':>9s}"
        lines.append(f"{r['model']:10s} {r['layer']:18s} {r['batch']:3d} " + " ".join(ms(r[c]) for c in COLUMNS)
                     + f" {r['chosen']:>10s} {pair}")
    if rows:
        worst = auto_over_fastest(rows)
        paired = " (auto and the fastest timed again in alternating rounds)" if "auto_vs_fastest" in rows[0] else ""
        lines.append(f"auto / fastest forced engine: at most {worst:.2f}x over {len(rows)} layers{paired}")
        for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
            sub = [r for r in rows if (r["model"], r["batch"]) == (model, batch)]
            tot = {c: total(sub, c) for c in ("auto", "torch_int8", "onednn_int8", "onednn_qconv")}
            line = f"  {model} n={batch} summed over its layers: auto {tot['auto'] * 1e3:.3f} ms"
            if tot["torch_int8"]:
                line += (f", torch_int8 {tot['torch_int8'] * 1e3:.3f} ms (torch_int8 / auto = "
                         f"{tot['torch_int8'] / tot['auto']:.2f}x)")
            if tot["onednn_int8"] and tot["onednn_qconv"]:
                line += (f"; onednn_int8's input pass + epilogue = {tot['onednn_int8'] / tot['onednn_qconv'] - 1:.0%}"
                         " of its oneDNN call")
            lines.append(line)
        lines.append("auto's first-call measurement per layer shape (the choice is made once per shape):")
        seen = set()
        for r in rows:
            if (r["model"], r["layer"]) not in seen:
                seen.add((r["model"], r["layer"]))
                lines.append(f"  {r['model']:10s} {r['layer']:18s} -> {r['chosen']}: {r.get('why', '?')}")
    return "\n".join(lines)


def main(argv=None):
    a = parse_layer_bench_args(__doc__.splitlines()[0], argv)
    print(format_table(bench_layers(a.models, a.batches, a.min_time, a.clock), a.clock))


if __name__ == "__main__":
    main()
