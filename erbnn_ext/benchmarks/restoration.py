"""Timing of weight restoration (method.md sections 1 and 6): the fused native kernels against the
pure-PyTorch reference and the IR-Net / ReCU baselines, on the binary layer shapes of the paper's models.

Each measurement returns seconds per call (median of torch.utils.benchmark's blocked_autorange).
`compare_weight_restoration(model)` gives one row per layer shape; `format_table(rows)` prints them with
the sum over the model's binary layers (each shape weighted by how many layers have it).

    python -m erbnn_ext.benchmarks.restoration --model resnet18
"""
import argparse

import torch
import torch.utils.benchmark as tb

from .. import baselines, reference
from .shapes import MODELS

FORWARD_METHODS = ("native", "reference", "irnet", "recu")
BACKWARD_METHODS = ("native_bwd", "reference_bwd", "native_fwd_bwd", "reference_fwd_bwd")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, min_run_time=0.2):
    """Median seconds per call of fn() (device-synchronised)."""
    _sync(device)

    def call():
        fn()
        _sync(device)

    return tb.Timer(stmt="call()", globals={"call": call}).blocked_autorange(min_run_time=min_run_time).median


def _native_ops(device):
    from .. import ops
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
            row[k] = time_fn(fn, device, min_run_time)
        rows.append(row)
    return rows


def totals(rows):
    """Sum over the model's binary layers (each shape weighted by its layer count)."""
    keys = [k for k in rows[0] if k not in ("name", "shape", "count")]
    return {k: sum(r[k] * r["count"] for r in rows) for k in keys}


def format_table(rows, title=""):
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
    a = p.parse_args(argv)
    import erbnn_ext
    info = erbnn_ext.backend_info()
    rows = compare_weight_restoration(a.model, a.device, a.min_run_time, not a.no_backward)
    print(format_table(rows, f"weight restoration, {a.model}, {a.device}, torch {info['torch']}, "
                             f"{info['threads']} threads, cpu_isa {info['cpu_isa']}"))


if __name__ == "__main__":
    main()
