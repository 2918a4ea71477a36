"""THE route of an ER layer's forward: which kernel runs it, in which layout, and why (one function, `route`).

ERBinaryConv2d / ERBinaryLinear call `route(self, x)` first thing in forward and follow it; `erbnn info
--model NAME` and the training-step benchmark print it per layer (`routes`). The backend of each op
inside a route is still chosen by the single dispatch point, erbnn_ext.ops.resolve.

Kernels (Route.kernel):
- "xnor_eval": eval under no_grad on the native backend: the packed XNOR-popcount conv of the running
  statistics (nn.layers._Restoration._xnor_forward; float64 keeps the exact float path).
- "er_step": a training step as ONE autograd node (functional.ERConv2dStep): the fused training ops, the
  popcount forward conv, F.conv2d's backward. Eager mode, float32 CPU, native kernels; under CPU bfloat16
  autocast (AMP_STEPS) the same step on x in float32, its output and its conv backward in bfloat16.
- "restored_popcount": the composed functions (RestoreWeight + RestoreActivation + RestoredConv2d) with
  the popcount forward conv: a training step the fused node does not take (fused_train off).
- "float": the restored weights and input through F.conv2d / F.linear: everything else (the reference
  backend, torch.compile, autocast, float64, CUDA training, eval with grad, an empty batch).
Layouts (Route.layout): "nchw", or "nhwc" for an er_step whose restored input is held as NHWC rows
(_nhwc.py: oneDNN's conv backward without reorders).

Settings, per layer (constructor arguments, plain attributes: not state, not in the state_dict):
xnor_train (the popcount forward in training, default True), nhwc_train (None: the measured rule
NHWC_MAX_CHANNELS, or True / False), fused_train (the one-node step, default True). `train_route(...)`
overrides them for every layer inside a `with` block (the benchmarks' --float-conv / --nhwc).
"""
import contextlib
from typing import NamedTuple

import torch

from .. import _nhwc, functional as EF, ops

# Inputs of at most this many channels take the NHWC step (nhwc_train None). Measured on the 2-core
# Zen 5 (docs/architecture.md, tuning constants): NHWC cut the steps of ResNet-20's stride-2 layers by
# 10-20% and of ResNet-18's 64-128-channel inputs by up to 12%, and lost up to 20% on 256 and 512
# channels (oneDNN's channels_last weight gradient is slower there). A channels_last input always
# takes it (its rows are a view).
NHWC_MAX_CHANNELS = 128

XNOR_EVAL, ER_STEP, RESTORED_POPCOUNT, FLOAT = "xnor_eval", "er_step", "restored_popcount", "float"
NCHW, NHWC = "nchw", "nhwc"


class Route(NamedTuple):
    kernel: str
    layout: str
    reason: str

    def __str__(self):
        return f"{self.kernel} ({self.layout}): {self.reason}"


# Routes are constants (no allocation or formatting per forward).
_EVAL_XNOR = Route(XNOR_EVAL, NCHW, "eval under no_grad, native kernels: packed XNOR-popcount conv")
_STEP_NHWC = Route(ER_STEP, NHWC, "training step, eager float32 native: one autograd node; y held as NHWC rows "
                                  "(in_channels <= NHWC_MAX_CHANNELS, a channels_last input, or nhwc_train)")
_STEP_NCHW = Route(ER_STEP, NCHW, "training step, eager float32 native: one autograd node in NCHW order "
                                  "(in_channels > NHWC_MAX_CHANNELS or nhwc_train False)")
_STEP_AMP_NHWC = Route(ER_STEP, NHWC, "training step under CPU bfloat16 autocast: the NHWC step on x in float32, "
                                      "popcount forward (exact), output in bfloat16, the conv backward in bfloat16")
_STEP_AMP_NCHW = Route(ER_STEP, NCHW, "training step under CPU bfloat16 autocast: the NCHW step on x in float32, "
                                      "popcount forward (exact), output in bfloat16, the conv backward in bfloat16")
AMP_STEPS = (_STEP_AMP_NHWC, _STEP_AMP_NCHW)
_COMPOSED = Route(RESTORED_POPCOUNT, NCHW, "training step with fused_train off: composed functions, popcount "
                                           "forward conv")
_FLOAT_TRAIN = Route(FLOAT, NCHW, "training step off the popcount path (reference backend, torch.compile, "
                                  "autocast other than CPU bfloat16, not float32, CUDA, or xnor_train False): F.conv2d")
_FLOAT_NO_STEP = Route(FLOAT, NCHW, "no training step (no grad, an empty batch, or eval with grad): restored "
                                    "values through F.conv2d")
_FLOAT_EVAL = Route(FLOAT, NCHW, "eval under no_grad without the native XNOR kernel (reference backend, "
                                 "float64 or no kernel for the device): restored values through F.conv2d")
_LINEAR = Route(FLOAT, NCHW, "restored values through F.linear")

_OVERRIDE = {"xnor_train": None, "nhwc_train": None, "fused_train": None, "lean_train": None}
# a layer pickled without them
_DEFAULT = {"xnor_train": True, "nhwc_train": None, "fused_train": True, "lean_train": False}


@contextlib.contextmanager
def train_route(xnor=None, nhwc=None, fused=None, lean=None):
    """Within the block, every ER layer's xnor_train / nhwc_train / fused_train / lean_train is `xnor` /
    `nhwc` / `fused` / `lean` where that is not None (process-wide, like erbnn_ext.use_backend). nhwc:
    True, False, or "auto" for the measured rule (nhwc_train None)."""
    saved = dict(_OVERRIDE)
    for key, v in (("xnor_train", xnor), ("nhwc_train", nhwc), ("fused_train", fused), ("lean_train", lean)):
        if v is not None:
            _OVERRIDE[key] = v
    try:
        yield
    finally:
        _OVERRIDE.update(saved)


def _setting(layer, key):
    v = _OVERRIDE[key]
    return getattr(layer, key, _DEFAULT[key]) if v is None else v


def lean_train(layer) -> bool:
    """Whether layer's fused training step keeps the packed signs of y and w_b for its backward instead of
    the float tensors (memory of a float conv's step; the backward rebuilds them, bit for bit, at a cost
    in step time: docs/training.md)."""
    return bool(_setting(layer, "lean_train"))


def _eval_xnor(layer, x) -> bool:
    return (not layer.training and not torch.is_grad_enabled() and x.dtype != torch.float64
            and ops.native_now() and ops.kernel_runs_on("binary_conv2d_packed", x.device))


def route(layer, x: torch.Tensor) -> Route:
    """The route `layer` (ERBinaryConv2d or ERBinaryLinear) takes for input x now (mode, grad mode,
    backend, compile and autocast state included). See the module docstring."""
    if _eval_xnor(layer, x):
        return _EVAL_XNOR
    if not isinstance(layer, torch.nn.Conv2d):
        return _LINEAR
    if not layer._measuring(x):
        return _FLOAT_EVAL if not layer.training and not torch.is_grad_enabled() else _FLOAT_NO_STEP
    amp = EF.amp_step_dtype(x) if layer.weight.dtype == torch.float32 else None
    if not (_setting(layer, "xnor_train") and (amp is not None or (EF.xnor_trains(x) and x.dtype == layer.weight.dtype))):
        return _FLOAT_TRAIN
    if _setting(layer, "fused_train") and ops.kernel_runs_on("restore_activation_train", x.device):
        nhwc = _setting(layer, "nhwc_train")
        if nhwc is None or nhwc == "auto":
            nhwc = layer.in_channels <= NHWC_MAX_CHANNELS or _nhwc.is_nhwc(x)
        if amp is not None:
            return _STEP_AMP_NHWC if nhwc else _STEP_AMP_NCHW
        return _STEP_NHWC if nhwc else _STEP_NCHW
    if amp is not None:  # the composed functions have no autocast form: autocast's F.conv2d
        return _FLOAT_TRAIN
    b = layer.bias
    if b is not None and b.dtype != x.dtype:  # RestoredConv2d's backward (F.conv2d's) would refuse it
        return _FLOAT_TRAIN
    return _COMPOSED
