"""The AMX-host speed goals of the CPU engines, measured and checked in one command.

On the CPU at hand (1 thread, thread clock), ResNet-18 CIFAR layers at batch 16 unless stated:
- engines: the engine `auto` chose, input sign / packing included, against torch's int8 quantized conv
  (input already quantized), summed over the layers (goal >= 1.3x); `auto` against the fastest forced
  engine on every layer (goal within 10%);
- frozen models: frozen resnet18_1w1a against its float32 twin (>= 12x) and its bfloat16-autocast twin
  (>= 3x) at batch 16; frozen resnet20_1w1a against its float32 twin at batch 1 and 16 (>= 4x).
The goals are set for an Intel Xeon with AMX (AMX-INT8, AMX-BF16); on another CPU the report says so and
its figures are that CPU's (on a CPU without AMX the engines to compare are xnor, int8_vnni, onednn_int8).

    python -m erbnn_ext.benchmarks.amx_goals [--min-time 0.2] [--strict]

--strict: exit status 1 when a goal is missed (on an AMX host). `make amx-check` runs it.
"""
import argparse
import sys

import torch

import erbnn_ext

from . import engines, frozen
from .machine import cpu_flags, cpu_model

GOALS = {"engine_vs_torch_int8": 1.3, "auto_vs_fastest": 1.10, "resnet18_vs_fp32": 12.0,
         "resnet18_vs_bf16": 3.0, "resnet20_vs_fp32": 4.0}


def amx_flags():
    """The AMX feature flags of this CPU as the kernel reports them (Linux), e.g. ['amx_bf16', 'amx_int8',
    'amx_tile']; [] elsewhere."""
    return [f for f in cpu_flags() if f.startswith("amx")]


def measure(min_time=0.2, frozen_time=0.5):
    """{"layers": engine rows of ResNet-18 at batch 16, "frozen": {(model, batch): {case: seconds}}}."""
    rows = engines.bench_layers(("resnet18",), (16,), min_time, clock="thread")
    runs = {(name, batch): frozen.run(name, batch, threads=1, min_run_time=frozen_time, clock="thread")
            for name, batch in (("resnet18_1w1a", 16), ("resnet20_1w1a", 1), ("resnet20_1w1a", 16))}
    return {"layers": rows, "frozen": runs}


def check(m):
    """[(goal text, measured value, goal value, met)] from measure()'s figures."""
    rows = m["layers"]
    out = []
    auto, peer = engines.total(rows, "auto"), engines.total(rows, "torch_int8")
    if peer:
        out.append(("torch int8 conv / chosen engine, summed over ResNet-18's layers", peer / auto,
                    GOALS["engine_vs_torch_int8"], peer / auto >= GOALS["engine_vs_torch_int8"]))
    worst = engines.auto_over_fastest(rows)
    out.append(("auto / fastest engine, worst layer", worst, GOALS["auto_vs_fastest"],
                worst <= GOALS["auto_vs_fastest"]))
    r18 = m["frozen"][("resnet18_1w1a", 16)]
    for case, key in (("float32", "resnet18_vs_fp32"), ("bfloat16", "resnet18_vs_bf16")):
        v = r18[case] / r18["frozen"]
        out.append((f"frozen resnet18_1w1a vs its {case} twin, batch 16", v, GOALS[key], v >= GOALS[key]))
    for batch in (1, 16):
        r20 = m["frozen"][("resnet20_1w1a", batch)]
        v = r20["float32"] / r20["frozen"]
        out.append((f"frozen resnet20_1w1a vs its float32 twin, batch {batch}", v, GOALS["resnet20_vs_fp32"],
                    v >= GOALS["resnet20_vs_fp32"]))
    return out


def report(m, checks, flags):
    info = erbnn_ext.backend_info()
    lines = [f"# AMX goals: CPU {cpu_model()}, AMX flags {','.join(flags) or 'none'}, torch {torch.__version__}, "
             f"engines {','.join(info['conv_engines'])}, amx: {info.get('amx_status', '?')}"]
    if not flags:
        lines.append("# no AMX flags on this CPU: the goals are set for an AMX host; the figures are this CPU's")
    lines.append(engines.format_table(m["layers"], clock="thread"))
    lines.append(frozen.format_models(m["frozen"], 1))
    lines.append(f"{'goal':64s} {'measured':>9s} {'goal':>9s}  met")
    for text, value, goal, met in checks:
        sense = "<=" if text.startswith("auto") else ">="
        lines.append(f"{text:64s} {value:8.2f}x {sense} {goal:5.2f}x  {'yes' if met else 'NO'}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per engine case (default 0.2)")
    ap.add_argument("--frozen-time", type=float, default=0.5, help="seconds per frozen-model case (default 0.5)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed on an AMX host")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    flags = amx_flags()
    m = measure(a.min_time, a.frozen_time)
    checks = check(m)
    print(report(m, checks, flags), flush=True)
    if a.strict and flags and not all(c[3] for c in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
