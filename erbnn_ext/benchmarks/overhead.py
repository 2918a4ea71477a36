"""Restoration overhead per binary layer: ER-BNN (native and reference backends) against IR-Net and ReCU.

What one "call" does, per binary conv layer (weights W of the layer, activations x of a batch):
  fwd      the forward restoration of W and x under no_grad, as a layer computes it in training:
           ER-BNN  restore_weight(W) + restore_activation(x) (batch statistics; method.md 1-2)
           IR-Net  irnet_binarize_weight(W) + sign(x)
           ReCU    recu_binarize_weight(W) + sign(x / sqrt(var(x_n) + 1e-5)) per sample
  fwd+bwd  the training-mode versions with their surrogate gradients (method.md 3 and 6), then
           torch.autograd.grad of both outputs w.r.t. W and x with fixed random upstream gradients.
  train    what a training step of the layer really runs for restoration: ER-BNN's fused training ops
           (restore_weight_train / restore_activation_train: restoration + the per-step width
           measurement, two exact quantiles at p = 0.8, + ring and width updates on the layer's buffers)
           and their backward, as ERBinaryConv2d runs them. IR-Net's EDE and ReCU have no width
           measurement: their training step is their fwd+bwd (the summary reuses that time).
The conv itself is not included (binary_conv.py times it).

Per kernel (`python -m erbnn_ext.benchmarks.overhead --model resnet18`, and bench/test_bench_restore.py):
the weight restoration alone, the fused native kernels against the pure-PyTorch reference and the IR-Net /
ReCU baselines (forward), and the fused backward against autograd of the reference.
"""
import argparse

import torch

from .. import baselines, functional as EF, ops, reference
from .._backend import native_active, use_backend
from .shapes import MODELS
from .timing import header, seconds

METHODS = ("erbnn_native", "erbnn_reference", "irnet", "recu")
LABELS = {"erbnn_native": "ER-BNN native", "erbnn_reference": "ER-BNN reference",
          "irnet": "IR-Net", "recu": "ReCU"}
MODES = ("fwd", "fwd+bwd", "train")
ER_ONLY_MODES = ("train",)  # measured for ER-BNN only; a baseline's training step is its fwd+bwd
# The paper's claim: restoration costs this much less time than IR-Net-style restoration (percent).
PAPER_REDUCTION = {"resnet18": 60.0, "resnet20": 67.0}
QUANTILE_P = 0.8  # start of the percentile schedule (method.md 3)

_OPS = {
    "fwd": ("restore_weight", "restore_activation"),
    "fwd+bwd": ("restore_weight", "restore_activation", "_restore_weight_backward",
                "_restore_activation_backward"),
    "train": ("restore_weight_train", "restore_activation_train", "_restore_weight_backward",
              "_restore_activation_backward"),
}


def erbnn_backend(method, mode, device) -> str:
    """Which implementation an ER-BNN row really ran: "native", "reference", or "mixed (reference: ...)"
    when only some of its ops have a compiled kernel for this device (the rest fall back per op)."""
    if method != "erbnn_native":
        return "reference" if method == "erbnn_reference" else "pytorch"
    with use_backend("native"):
        if not native_active():
            return "reference (native not loaded)"
    dev = torch.device(device).type
    missing = [op for op in _OPS[mode] if not ops.has_kernel(op, dev)]
    if not missing:
        return "native"
    if len(missing) == len(_OPS[mode]):
        return "reference (no kernels yet)"
    return "mixed (reference: " + ", ".join(missing) + ")"


def make_inputs(shape, batch, device, seed=0):
    """Weights (kaiming-like scale) and activations of one layer, plus upstream gradients of both."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape.weight_shape(), generator=g) * (2.0 / (shape.cin * shape.k * shape.k)) ** 0.5
    x = torch.randn(shape.input_shape(batch), generator=g)
    gw, gx = torch.randn(w.shape, generator=g), torch.randn(x.shape, generator=g)
    return tuple(t.to(device) for t in (w, x, gw, gx))


def _erbnn_fn(backend, mode, w, x, gw, gx):
    b = torch.ones((), device=w.device)
    if mode == "fwd":
        def fwd():
            with use_backend(backend), torch.no_grad():
                EF.restore_weight(w, b)
                EF.restore_activation(x, b)
        return fwd
    wl, xl = w.detach().requires_grad_(), x.detach().requires_grad_()

    if mode == "fwd+bwd":
        def fwd_bwd():
            with use_backend(backend):
                w_b, _, _ = EF.restore_weight(wl, b)
                y, _, _ = EF.restore_activation(xl, b)
                torch.autograd.grad((w_b, y), (wl, xl), (gw, gx))
        return fwd_bwd
    # the buffers of one layer (ApproxSign p, width, q ring; the statistics rings), as ERBinaryConv2d has
    p = torch.tensor(QUANTILE_P, dtype=torch.float64, device=w.device)
    ring = lambda n: torch.zeros(n, dtype=torch.float64, device=w.device)  # noqa: E731
    count = lambda: torch.zeros((), dtype=torch.int64, device=w.device)  # noqa: E731
    width = lambda: torch.ones((), dtype=torch.float64, device=w.device)  # noqa: E731
    wstate = (p, ring(100), count(), width())
    xstate = (p, ring(100), count(), width(), ring(1000), count(), ring(1000), count())

    def train_step():
        with use_backend(backend):
            w_b, _, _ = EF.restore_weight_train(wl, *wstate)
            y, _, _ = EF.restore_activation_train(xl, *xstate)
            torch.autograd.grad((w_b, y), (wl, xl), (gw, gx))
    return train_step


def _baseline_fn(method, mode, w, x, gw, gx):
    if mode == "fwd":
        wfn, xfn = {"irnet": (baselines.irnet_binarize_weight, baselines.irnet_binarize_activation),
                    "recu": (baselines.recu_binarize_weight, baselines.recu_binarize_activation)}[method]

        def fwd():
            with torch.no_grad():
                wfn(w)
                xfn(x)
        return fwd
    wl, xl = w.detach().requires_grad_(), x.detach().requires_grad_()
    if method == "irnet":
        t, k = baselines.ede_params(0, 1)
        wfn = lambda v: baselines.irnet_binarize_weight_train(v, t, k)  # noqa: E731
        xfn = lambda v: baselines.irnet_binarize_activation_train(v, t, k)  # noqa: E731
    else:
        wfn, xfn = baselines.recu_binarize_weight_train, baselines.recu_binarize_activation_train

    def train_step():
        torch.autograd.grad((wfn(wl), xfn(xl)), (wl, xl), (gw, gx))
    return train_step


def make_fn(method, mode, w, x, gw, gx):
    """The callable timed for one (method, mode) on one layer's tensors."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if method.startswith("erbnn"):
        return _erbnn_fn(method.split("_")[1], mode, w, x, gw, gx)
    if mode in ER_ONLY_MODES:
        raise ValueError(f"mode {mode!r} exists for the ER-BNN methods only")
    return _baseline_fn(method, mode, w, x, gw, gx)


def cases(models, batch, device, methods=METHODS, modes=MODES):
    """Yield (row, fn) for every model x layer x mode x method (mode train: ER-BNN methods only). The layer's tensors are made once and
    shared by its methods, which run back to back so that they see the same machine state."""
    for model in models:
        for shape in MODELS[model]:
            tensors = make_inputs(shape, batch, device)
            for mode in modes:
                for method in methods:
                    if mode in ER_ONLY_MODES and not method.startswith("erbnn"):
                        continue
                    row = {"section": "overhead", "model": model, "layer": shape.name, "count": shape.count,
                           "weight_shape": list(shape.weight_shape()),
                           "input_shape": list(shape.input_shape(batch)), "batch": batch,
                           "method": method, "label": LABELS[method], "mode": mode,
                           "backend": erbnn_backend(method, mode, device), "device": str(device)}
                    yield row, make_fn(method, mode, *tensors)


# ------------------------------------------------------------------------------ per kernel: weights
FORWARD_METHODS = ("native", "reference", "irnet", "recu")
BACKWARD_METHODS = ("native_bwd", "reference_bwd", "native_fwd_bwd", "reference_fwd_bwd")


def _native_ops(device):
    if not ops.has_kernel("restore_weight", device.type):
        raise RuntimeError(f"no native restore_weight kernel for {device.type} in this build")
    return torch.ops.erbnn


def weight_forward_fns(w):
    """The forward weight restorations to compare, as zero-argument callables."""
    ops = _native_ops(w.device)
    return {
        "native": lambda: ops.restore_weight(w),
        "reference": lambda: reference.restore_weight(w),
        "irnet": lambda: baselines.irnet_binarize_weight(w),
        "recu": lambda: baselines.recu_binarize_weight(w),
    }


def weight_backward_fns(w, b=0.5):
    """Backward of weight restoration: the fused native op against autograd of the reference
    (reference.restore_weight_autograd), backward alone (graph retained) and forward + backward."""
    ops = _native_ops(w.device)
    bt = torch.tensor(b, dtype=torch.float32, device=w.device)
    g = torch.randn_like(w)
    _, mean, alpha = ops.restore_weight(w)
    wr = w.detach().clone().requires_grad_()
    out = reference.restore_weight_autograd(wr, bt)

    def native_fwd_bwd():
        _, m, a = ops.restore_weight(w)
        return ops._restore_weight_backward(g, w, m, a, bt)

    def reference_fwd_bwd():
        return torch.autograd.grad(reference.restore_weight_autograd(wr, bt), wr, g)

    return {
        "native_bwd": lambda: ops._restore_weight_backward(g, w, mean, alpha, bt),
        "reference_bwd": lambda: torch.autograd.grad(out, wr, g, retain_graph=True),
        "native_fwd_bwd": native_fwd_bwd,
        "reference_fwd_bwd": reference_fwd_bwd,
    }


def compare_weight_restoration(model="resnet18", device="cpu", min_run_time=0.2, backward=True):
    """One dict per layer shape: name, shape, count, and seconds per call of every method."""
    device = torch.device(device)
    rows = []
    for s in MODELS[model]:
        w = torch.randn(s.weight_shape(), device=device)
        fns = dict(weight_forward_fns(w))
        if backward:
            fns.update(weight_backward_fns(w))
        row = {"name": s.name, "shape": s.weight_shape(), "count": s.count}
        for k, fn in fns.items():
            row[k] = seconds(fn, min_run_time=min_run_time)
        rows.append(row)
    return rows


def totals(rows):
    """Sum over the model's binary layers (each shape weighted by its layer count)."""
    keys = [k for k in rows[0] if k not in ("name", "shape", "count")]
    return {k: sum(r[k] * r["count"] for r in rows) for k in keys}


def format_weight_table(rows, title=""):
    keys = [k for k in rows[0] if k not in ("name", "shape", "count")]
    head = f"{'layer':<18}{'shape':<20}{'n':>3} " + "".join(f"{k:>19}" for k in keys)
    lines = [title, head] if title else [head]
    for r in rows:
        lines.append(f"{r['name']:<18}{str(tuple(r['shape'])):<20}{r['count']:>3} "
                     + "".join(f"{r[k] * 1e6:>16.1f} us" for k in keys))
    t = totals(rows)
    lines.append(f"{'SUM (x count)':<41} " + "".join(f"{t[k] * 1e6:>16.1f} us" for k in keys))
    speed = []
    if "native" in t:
        speed += [f"reference/native {t['reference'] / t['native']:.1f}x",
                  f"irnet/native {t['irnet'] / t['native']:.1f}x", f"recu/native {t['recu'] / t['native']:.1f}x"]
    if "native_bwd" in t:
        speed += [f"reference_bwd/native_bwd {t['reference_bwd'] / t['native_bwd']:.1f}x",
                  f"reference_fwd_bwd/native_fwd_bwd {t['reference_fwd_bwd'] / t['native_fwd_bwd']:.1f}x"]
    lines.append("speed-ups over the sum: " + ", ".join(speed))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-run-time", type=float, default=0.2)
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = compare_weight_restoration(a.model, a.device, a.min_run_time, not a.no_backward)
    print(format_weight_table(rows, header(f"Weight restoration per layer, {a.model}: us per call", a.device)))


if __name__ == "__main__":
    main()
