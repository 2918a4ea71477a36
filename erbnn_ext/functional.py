"""Differentiable ER-BNN functions (api.md): torch.autograd.Function subclasses whose forward and
backward run the active backend's ops (torch.ops.erbnn via erbnn_ext.ops, or erbnn_ext.reference).

Math: ../shared/docs/method.md sections 1-3. "sign" is +1 for x >= 0 (also -0.0), -1 otherwise.
"""
import torch

from . import _backend, ops, reference

__all__ = [
    "ApproxSign", "RestoreWeight", "RestoreActivation", "RestoreActivationFixed",
    "approx_sign", "restore_weight", "restore_activation", "two_sided_quantile",
    "pack_signs", "unpack_signs", "binary_conv2d", "binary_linear",
]


def _be():
    return ops if _backend.native_active() else reference


def _width(b, like):
    # A float or tensor b becomes a 0-dim tensor of like's accumulation dtype. The Functions keep it on
    # ctx (not save_for_backward) and read it when the backward runs: the forward never depends on b, so
    # a layer may pass a tensor that it fills in after measuring this step's quantile (nn.layers).
    return reference.as_width(b.detach() if isinstance(b, torch.Tensor) else b, like)


class ApproxSign(torch.autograd.Function):
    """Forward sign(x); backward dL/dx = g * (h / b) * (1 - tanh(x / b)^2), h = max(b, 1)."""

    @staticmethod
    def forward(ctx, x, b):
        ctx.save_for_backward(x)
        ctx.b = b
        return _be().approx_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _be().approx_sign_backward(grad.contiguous(), x, ctx.b), None


def approx_sign(x, b=1.0):
    """sign(x) with ER-BNN's tanh surrogate gradient of width b (method.md section 3).

    Example: ``y = approx_sign(x, b=0.5)``.
    """
    return ApproxSign.apply(x, _width(b, x))


class RestoreWeight(torch.autograd.Function):
    """Weight restoration (method.md section 1); gradient through mean and alpha."""

    @staticmethod
    def forward(ctx, w, b):
        w_b, mean, alpha = _be().restore_weight(w)
        ctx.save_for_backward(w, mean, alpha)
        ctx.b = b
        ctx.mark_non_differentiable(mean, alpha)
        return w_b, mean, alpha

    @staticmethod
    def backward(ctx, grad_wb, _gm, _ga):
        w, mean, alpha = ctx.saved_tensors
        if grad_wb is None:
            return None, None
        return _be().restore_weight_backward(grad_wb.contiguous(), w, mean, alpha, ctx.b), None


def restore_weight(w, b=1.0):
    """Per output channel (dim 0): mean, population RMS alpha, w_b = sign((w - mean) / alpha).

    Args: w [O, ...] float tensor; b: surrogate width (float or 0-dim tensor, read when the backward runs).
    Returns (w_b, mean, alpha): w_b like w in {-1, +1}; mean, alpha [O] float32 (float64 for float64 w).
    Gradient: g = dL/dw_b * (h/b)(1 - tanh(What/b)^2), dL/dw = (g - mean(g) - What*mean(g*What)) / alpha,
    with alpha floored at 1e-12 (a constant channel gives w_b = +1 and a finite gradient).
    Non-finite w: on CPU a ValueError naming w; on CUDA the forward does not synchronise with the host
    to check, so NaN/Inf propagate instead (that channel's mean/alpha are NaN or Inf, its w_b is NaN).
    """
    return RestoreWeight.apply(w, _width(b, w))


class RestoreActivation(torch.autograd.Function):
    """Activation restoration with batch statistics (method.md section 2), mean and sigma differentiable."""

    @staticmethod
    def forward(ctx, x, b):
        y, mean, sigma, rms = _be().restore_activation(x)
        ctx.save_for_backward(x, mean, sigma, rms)
        ctx.b = b
        ctx.mark_non_differentiable(mean, sigma)
        return y, mean, sigma

    @staticmethod
    def backward(ctx, grad_y, _gm, _gs):
        x, mean, sigma, rms = ctx.saved_tensors
        if grad_y is None:
            return None, None
        return _be().restore_activation_backward(grad_y.contiguous(), x, mean, sigma, rms, ctx.b), None


class RestoreActivationFixed(torch.autograd.Function):
    """Activation restoration with given statistics: y = sigma * sign((x - mean) / sigma) + mean."""

    @staticmethod
    def forward(ctx, x, mean, sigma, b):
        ctx.save_for_backward(x, mean, sigma)
        ctx.b = b
        return _be().restore_activation_fixed(x, mean, sigma)

    @staticmethod
    def backward(ctx, grad_y):
        x, mean, sigma = ctx.saved_tensors
        return _be().restore_activation_fixed_backward(grad_y.contiguous(), x, mean, sigma, ctx.b), None, None, None


def restore_activation(x, b=1.0, stats=None):
    """y = sigma * sign((x - mean) / sigma) + mean (method.md section 2).

    Args: x [N, C, H, W] or [N, F]; b: surrogate width; stats: None for the batch statistics
    (mean = mean(x), sigma = mean over samples of the per-sample RMS about mean; both differentiable),
    or (mean, sigma) to use fixed values. Returns (y, mean, sigma), mean and sigma 0-dim.
    Non-finite x: on CPU a ValueError; on CUDA (no host sync in the forward) NaN propagates into
    mean, sigma and y instead.
    """
    if x.dim() < 1:
        raise ValueError(f"x must have a batch dimension, got a {x.dim()}-D tensor")
    if stats is None:
        return RestoreActivation.apply(x, _width(b, x))
    acc = reference.acc_dtype(x.dtype)
    mean, sigma = (torch.as_tensor(s, dtype=acc, device=x.device).detach().reshape(()) for s in stats)
    return RestoreActivationFixed.apply(x, mean, sigma, _width(b, x)), mean, sigma


def two_sided_quantile(x, p):
    """max(Q_p(|x[x<=0]|), Q_p(x[x>=0])), linear interpolation as numpy.quantile, exact over all
    elements (selection, not sorting, in the native kernels). One half empty -> the other's. 0-dim float32.
    NaN/Inf in x: ValueError, except with the native CUDA kernel, which returns NaN (no host sync)."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    with torch.no_grad():
        return _be().two_sided_quantile(x.detach(), p)


def pack_signs(x, dim=1):
    """Pack sign bits of x along `dim` into integer words; returns (packed, n), n = x.shape[dim].

    Layout: `dim` is moved last and replaced by ceil(n / W) words, W = 64 (int64) on CPU and 32 (int32)
    on CUDA; bit j of word k holds element k*W + j (1 for x >= 0, i.e. +1); tail bits are 0.
    """
    if x.dim() == 0:
        raise ValueError("pack_signs: x must have at least 1 dimension")
    return _be().pack_signs(x, dim), x.shape[dim]


def unpack_signs(packed, n, dim=1):
    """Inverse of pack_signs: float32 +-1 with the packed axis (length n) back at `dim`."""
    return _be().unpack_signs(packed, n, dim)


def _pair(v, name):
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


def binary_conv2d(x, w, stride=1, padding=0, dilation=1):
    """Exactly F.conv2d(sign(x), sign(w), stride, padding, dilation) with zero padding; float32 output
    holding integers. x: [N, C, H, W], w: [O, C, kh, kw]; groups = 1. Inference op (no gradient)."""
    return _be().binary_conv2d(x, w, _pair(stride, "stride"), _pair(padding, "padding"),
                               _pair(dilation, "dilation"))


def binary_linear(x, w):
    """Exactly sign(x) @ sign(w).T in float32. x: [..., K], w: [O, K]. Inference op."""
    return _be().binary_linear(x, w)
