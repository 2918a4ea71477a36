"""Binary conv (functional.binary_conv2d) against F.conv2d in float32 and bfloat16, same layer shapes.

binary_conv2d takes float tensors and signs them itself (its packing is part of each call); the float
convs get the same +-1 values already in their dtype. Which implementation binary_conv2d ran is
recorded: the XNOR-popcount kernel when ops.has_kernel("binary_conv2d", device) and the native backend
is active, else the reference (sign + float32 conv).
"""
import torch
import torch.nn.functional as F

from .. import functional as EF, ops
from .._backend import native_active, use_backend
from .overhead import make_inputs
from .shapes import MODELS

METHODS = ("binary_conv2d", "conv2d_fp32", "conv2d_bf16")
LABELS = {"binary_conv2d": "binary_conv2d", "conv2d_fp32": "F.conv2d fp32", "conv2d_bf16": "F.conv2d bf16"}


def binary_backend(device) -> str:
    with use_backend("native"):
        if not native_active():
            return "reference (native not loaded)"
    return "native" if ops.has_kernel("binary_conv2d", torch.device(device).type) else "reference (no kernel yet)"


def make_fn(method, shape, w, x):
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
    """Yield (row, fn) for every model x layer x method."""
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
                yield row, make_fn(method, shape, w, x)
