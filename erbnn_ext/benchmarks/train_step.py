"""Training step: ER-BNN against float, side by side in one process.

- per binary layer shape (shapes.py, batch --batch): one ERBinaryConv2d training step (layer in train
  mode, forward + backward, the input's and the weight's gradients, restoration statistics, quantiles and
  ring buffers included) against an nn.Conv2d of the same shape doing the same, and the ratio;
- per model: a full training step (forward + cross-entropy + backward + SGD step) of the ER-BNN model
  against its float twin (float_twin: the same network with nn.Conv2d / nn.Linear in place of each ER layer).
Each ER case and its float counterpart are timed in alternating rounds (timing.measure_side_by_side).

    python -m erbnn_ext.benchmarks.train_step [--models resnet20,resnet18] [--batch 16] [--threads 1] [--float-conv]
                                              [--nhwc auto|on|off] [--lean default|on|off] [--vs-keep]
                                              [--no-layers] [--amp bf16]

--amp bf16 runs every step, ER and float alike, under torch.autocast("cpu", bfloat16), as `erbnn train
--amp bf16` does: the float convs of both (the float twin's, and the ER layers' backward and, off the
popcount route, forward convs) then run in bfloat16 (oneDNN; AMX-BF16 where the CPU has it).
"""
import argparse
import copy
import math

import torch
import torch.nn.functional as F

from .. import models as zoo, nn as enn, ops
from ..training.args import AMP
from ..training.loop import autocast as training_autocast
from .._backend import get_backend, native_active, use_backend
from .shapes import MODELS, parse_models
from .timing import header, measure_side_by_side, paired_ratio

LAYER_METHODS = ("er_layer", "conv2d")
MODEL_METHODS = ("er_model", "float_twin")
# --vs-keep: the ER step with lean_train off (it keeps the restored y and w_b), timed beside the two above
KEEP_METHODS = {"er_layer": "er_layer_keep", "er_model": "er_model_keep"}
LABELS = {"er_layer": "ERBinaryConv2d", "conv2d": "nn.Conv2d", "er_model": "ER-BNN model",
          "float_twin": "float twin", "er_layer_keep": "ERBinaryConv2d (lean_train off)",
          "er_model_keep": "ER-BNN model (lean_train off)"}


def lean_train_off(module):
    """lean_train off on every ER layer of module (the step keeps y and w_b for its backward)."""
    for m in module.modules():
        if isinstance(m, enn.ERBinaryConv2d):
            m.lean_train = False
    return module


def model_builder(name: str):
    """The model of a benchmark model name (resnet20 -> resnet20_1w1a, resnet18_imagenet ->
    resnet18_1w1a_imagenet) and its input size."""
    key = zoo.model_name(name)
    return zoo.MODELS[key], zoo.INPUT_SIZES[key][-1]


def float_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of model with every ERBinaryConv2d / ERBinaryLinear replaced by a plain nn.Conv2d /
    nn.Linear of the same configuration and weights (training mode kept)."""
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, enn.ERBinaryConv2d):
            new = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                  bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
        elif isinstance(m, enn.ERBinaryLinear):
            new = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                                  device=m.weight.device, dtype=m.weight.dtype)
        else:
            continue
        with torch.no_grad():
            new.weight.copy_(m.weight)
            if m.bias is not None:
                new.bias.copy_(m.bias)
        new.train(m.training)
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, new)
    return twin


def autocast(device, amp):
    """The autocast context of a step, as training's (training.loop.autocast): amp None (float32), "bf16"
    or "fp16" (CUDA)."""
    if amp is not None and amp not in AMP:
        raise ValueError(f"amp must be None or one of {sorted(AMP)}, got {amp!r}")
    return training_autocast(torch.device(device), amp)


def layer_step(shape, batch, method="er_layer", device="cpu", backend=None, seed=0, amp=None):
    """A closure running one training step of one layer of this shape: forward, then backward of a fixed
    random upstream gradient into the input and the weight (amp: forward under autocast, as in training)."""
    g = torch.Generator().manual_seed(seed)
    cls = {"er_layer": enn.ERBinaryConv2d, "er_layer_keep": enn.ERBinaryConv2d, "conv2d": torch.nn.Conv2d}[method]
    torch.manual_seed(seed)
    layer = cls(shape.cin, shape.cout, shape.k, shape.stride, shape.padding, bias=False).to(device).train()
    if method == "er_layer_keep":
        lean_train_off(layer)
    x = torch.randn(shape.input_shape(batch), generator=g).to(device).requires_grad_()
    gy = torch.randn((batch, shape.cout, shape.out_hw, shape.out_hw), generator=g).to(device)
    backend = backend or get_backend()

    def step():
        with use_backend(backend):
            layer.weight.grad = x.grad = None
            with autocast(device, amp):
                out = layer(x)
            out.backward(gy.to(out.dtype))
    if method != "conv2d":
        with use_backend(backend), autocast(device, amp):
            step.route = enn.route(layer, x)  # the kernel and layout its steps take (nn.routing)
    return step


def model_step(name, batch, method="er_model", device="cpu", seed=0, amp=None):
    """A closure running one full training step (forward, cross-entropy, backward, SGD step) of the model
    (method er_model; er_model_keep: with lean_train off) or of its float twin (method float_twin); amp:
    forward and loss under autocast."""
    if method not in ("er_model", "er_model_keep", "float_twin"):
        raise ValueError(f"method must be er_model, er_model_keep or float_twin, got {method!r}")
    build, hw = model_builder(name)
    torch.manual_seed(seed)
    model = build(num_classes=10).to(device).train()
    if method == "float_twin":
        model = float_twin(model)
    elif method == "er_model_keep":
        lean_train_off(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, hw, hw, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return step


TRAIN_OPS = ("restore_weight_train", "restore_activation_train")  # one fused op per ER layer side


def _backend_label(device="cpu"):
    """What an ER layer's training step runs: native, or the reference twins (and why)."""
    if get_backend() == "reference":
        return "reference"
    if not native_active():
        return "reference (native not loaded)"
    missing = [op for op in TRAIN_OPS if not ops.has_kernel(op, torch.device(device).type)]
    return "native" if not missing else "reference twin (no native kernel: " + ", ".join(missing) + ")"


def cases(models, batch, device="cpu", layers=True, whole=True, amp=None, keep=False):
    """Yield (row, fn) for `erbnn bench`'s training-step section: per model, each layer shape with both
    methods back to back, then the model and its float twin (amp: all of them under that autocast); with
    keep, the ER steps with lean_train off beside them (KEEP_METHODS)."""
    layer_methods, model_methods = LAYER_METHODS, MODEL_METHODS
    if keep:
        layer_methods = ("er_layer", KEEP_METHODS["er_layer"], "conv2d")
        model_methods = ("er_model", KEEP_METHODS["er_model"], "float_twin")
    for model in models:
        if layers:
            for shape in MODELS[model]:
                for method in layer_methods:
                    row = {"section": "train_step", "model": model, "layer": shape.name, "count": shape.count,
                           "weight_shape": list(shape.weight_shape()), "input_shape": list(shape.input_shape(batch)),
                           "batch": batch, "method": method, "label": LABELS[method],
                           "backend": _backend_label(device) if method != "conv2d" else "pytorch", "device": str(device),
                           "amp": amp}
                    step = layer_step(shape, batch, method, device, amp=amp)
                    route = getattr(step, "route", None)
                    if route is not None:
                        row["route"] = f"{route.kernel}/{route.layout}"
                    yield row, step
        if whole:
            for method in model_methods:
                row = {"section": "train_step", "model": model, "layer": "(model)", "count": 1, "batch": batch,
                       "method": method, "label": LABELS[method],
                       "backend": _backend_label(device) if method != "float_twin" else "pytorch", "device": str(device),
                       "amp": amp}
                yield row, model_step(model, batch, method, device, amp=amp)


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarise(rows):
    """{"layers": per (model, layer) ER / conv ratio, "models": per model ER / float twin ratio,
    "layer_ratio_geomean": geometric mean of the per-layer ratios}. Ratios are timing.paired_ratio's: the
    median of the per-round ratios of the side-by-side timing."""
    t = {(r["model"], r["layer"], r["method"]): r for r in rows if r["section"] == "train_step"}
    layers, models = [], []
    for (model, layer, method), r in t.items():
        keep = t.get((model, layer, KEEP_METHODS.get(method)))
        if method == "er_layer" and (model, layer, "conv2d") in t:
            c = t[(model, layer, "conv2d")]
            layers.append({"model": model, "layer": layer, "count": r["count"], "input_shape": r["input_shape"],
                           "weight_shape": r["weight_shape"], "er_s": r["time_s"], "conv_s": c["time_s"],
                           "ratio": paired_ratio(r, c), "backend": r["backend"], "route": r.get("route"),
                           "amp": r.get("amp"), **_keep_columns(r, keep)})
        if method == "er_model" and (model, layer, "float_twin") in t:
            f = t[(model, layer, "float_twin")]
            models.append({"model": model, "er_s": r["time_s"], "float_s": f["time_s"], "ratio": paired_ratio(r, f),
                           "backend": r["backend"], "amp": r.get("amp"), **_keep_columns(r, keep)})
    return {"layers": layers, "models": models, "layer_ratio_geomean": geomean([e["ratio"] for e in layers])}


def _keep_columns(r, keep):
    """The lean_train-off step's time and the default step's time over it (--vs-keep), or nothing."""
    return {} if keep is None else {"keep_s": keep["time_s"], "vs_keep": paired_ratio(r, keep)}


def format_tables(summary, batch, smoke=False):
    """The per-layer and per-model tables (ms per step; ratio = ER / float)."""
    tag = " [SMOKE RUN: a few calls per case, not a measurement]" if smoke else ""
    keep = any("keep_s" in e for e in summary["layers"])
    keep_models = any("keep_s" in e for e in summary["models"])
    ratio = (lambda v: f"{'smoke':>7}") if smoke else (lambda v: f"{v:>6.2f}x")  # noqa: E731
    amp = {r.get("amp") for r in summary.get("layers", []) + summary.get("models", [])} - {None}
    if amp:
        tag = f" [under autocast {'/'.join(sorted(amp))}]" + tag
    lines = [f"Training step per binary layer, batch {batch}: ms per step (fwd + bwd, input and weight grads); "
             f"ratio = ERBinaryConv2d / nn.Conv2d, median of the per-round ratios{tag}",
             f"{'model':<10} {'layer':<16} {'n':>2} {'input':>14} {'ER ms':>9} {'conv ms':>9} {'ratio':>7}"
             + (f" {'keep ms':>9} {'ER/keep':>8}" if keep else "")]
    for e in summary["layers"]:
        lines.append(f"{e['model']:<10} {e['layer']:<16} {e['count']:>2} {'x'.join(map(str, e['input_shape'])):>14} "
                     f"{e['er_s'] * 1e3:>9.3f} {e['conv_s'] * 1e3:>9.3f} {ratio(e['ratio'])}"
                     + (f" {e['keep_s'] * 1e3:>9.3f} {ratio(e['vs_keep'])} " if "keep_s" in e else ""))
    gm = summary["layer_ratio_geomean"]
    if gm and not smoke:
        lines.append(f"geometric mean of the per-layer ratios: {gm:.2f}x")
        gk = geomean([e["vs_keep"] for e in summary["layers"] if "vs_keep" in e])
        if gk:
            lines.append(f"geometric mean of the per-layer ER / keep ratios (lean_train on / off): {gk:.3f}x")
    by_route = {}
    for e in summary["layers"]:
        if e.get("route"):
            by_route.setdefault(e["route"], []).append(e["layer"])
    if by_route:
        lines.append("ER routes (nn.routing): " + "; ".join(f"{k} ({', '.join(dict.fromkeys(v))})"
                                                             for k, v in by_route.items()))
    backends = sorted({e["backend"] for e in summary["layers"] + summary["models"]})
    if backends:
        lines.append(f"ER layers ran: {' / '.join(backends)}")
    if summary["models"]:
        lines += ["", f"Training step per model, batch {batch}: ms per step (forward + cross-entropy + backward + "
                      f"SGD step); ratio = ER-BNN model / float twin, median of the per-round ratios{tag}",
                  f"{'model':<10} {'ER ms':>10} {'float ms':>10} {'ratio':>7}"
                  + (f" {'keep ms':>10} {'ER/keep':>8}" if keep_models else "")]
        for e in summary["models"]:
            lines.append(f"{e['model']:<10} {e['er_s'] * 1e3:>10.2f} {e['float_s'] * 1e3:>10.2f} {ratio(e['ratio'])}"
                         + (f" {e['keep_s'] * 1e3:>10.2f} {ratio(e['vs_keep'])} " if "keep_s" in e else ""))
        if keep_models:
            lines.append("keep: the same ER model with lean_train off (its steps keep the restored y and w_b); "
                         "ER/keep: median of the per-round ratios")
    return "\n".join(lines)


def pairs(built):
    """Group consecutive cases of one (model, layer) (ER and its float twin) into lists, so that they are
    timed side by side; other cases stay alone."""
    groups = []
    for row, fn in built:
        key = (row["section"], row["model"], row.get("layer"))
        if row["section"] == "train_step" and groups and groups[-1][0] == key:
            groups[-1][1].append((row, fn))
        else:
            groups.append((key, [(row, fn)]))
    return [g for _, g in groups]


def measure_group(group, **kw):
    """Time a pairs() group side by side (timing.measure_side_by_side); returns its rows."""
    results = measure_side_by_side([fn for _, fn in group], **kw)
    return [{**row, **res} for (row, _), res in zip(group, results)]


def run(models=("resnet20", "resnet18"), batch=16, threads=1, min_run_time=0.3, repeat=None, device="cpu",
        layers=True, whole=True, clock="wall", amp=None, keep=False):
    rows = []
    for group in pairs(cases(models, batch, device, layers, whole, amp, keep)):
        rows += measure_group(group, repeat=repeat, min_run_time=2 * min_run_time, threads=threads, clock=clock)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=parse_models, default=["resnet20", "resnet18"],
                    help="comma-separated (default resnet20,resnet18)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per case (blocked_autorange)")
    ap.add_argument("--no-models", action="store_true", help="per-layer steps only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="thread: CPU time of the calling thread (needs --threads 1; robust on a busy machine)")
    ap.add_argument("--float-conv", action="store_true",
                    help="ER layers run their forward conv as F.conv2d (nn.train_route(xnor=False)) instead "
                         "of the packed popcount kernel: the restoration's own cost against float")
    ap.add_argument("--nhwc", choices=("auto", "on", "off"), default="auto",
                    help="the ER step's NHWC order (nn.train_route(nhwc=...)): auto (default: in_channels <= "
                         "128), on, off (NCHW throughout)")
    ap.add_argument("--lean", choices=("default", "on", "off"), default="default",
                    help="the ER steps' lean_train (nn.train_route(lean=...)): default (the layers' setting: on), on "
                         "(packed signs kept for the backward), off (the restored y and w_b kept)")
    ap.add_argument("--vs-keep", action="store_true",
                    help="also time each ER layer and model with lean_train off, side by side with the default "
                         "step and the float one (columns keep ms, ER/keep)")
    ap.add_argument("--no-layers", action="store_true", help="per-model steps only")
    ap.add_argument("--amp", choices=sorted(AMP), default=None,
                    help="every step (ER and float twin) under torch.autocast in this dtype, as `erbnn train --amp`")
    a = ap.parse_args(argv)
    if a.clock == "thread" and a.threads != 1:
        ap.error("--clock thread needs --threads 1")
    torch.set_num_threads(a.threads)
    conv = "F.conv2d" if a.float_conv else "popcount"
    print(header(f"Training step, ER-BNN vs float, ER layers: {_backend_label(a.device)}, forward conv: {conv}, "
                 f"NHWC step: {a.nhwc}, lean: {a.lean}, autocast: {a.amp or 'off'}", a.device))
    if a.vs_keep and a.lean != "default":
        ap.error("--vs-keep compares the layers' own settings: leave --lean at default")
    with enn.train_route(xnor=False if a.float_conv else None, nhwc={"auto": None, "on": True, "off": False}[a.nhwc],
                         lean={"default": None, "on": True, "off": False}[a.lean]):
        rows = run(a.models, a.batch, a.threads, a.min_time, device=a.device, layers=not a.no_layers,
                   whole=not a.no_models, clock=a.clock, amp=a.amp, keep=a.vs_keep)
    print(f"clock: {a.clock}")
    print(format_tables(summarise(rows), a.batch))


if __name__ == "__main__":
    main()
