"""Differentiable ER-BNN functions (api.md). Each runs its op through the dispatch point
(erbnn_ext.ops: torch.ops.erbnn or the reference twin) on detached inputs, then attaches the surrogate
gradient with a torch.autograd.Function whose backward runs the matching backward op ON THE BACKEND OF
THE FORWARD (recorded in ctx: autograd may run the backward on another thread).

The gradients are first-order only: a double backward raises (once_differentiable), as torchvision's
ops do. Math: docs/method.md sections 1-3. "sign" is +1 for x >= 0 (also -0.0), -1 otherwise.
"""
import torch
from torch.autograd.function import once_differentiable

from . import _nhwc, ops
from ._common import acc_dtype, as_width, pair

__all__ = [
    "ApproxSignFn", "RestoreWeight", "RestoreActivation", "RestoreActivationFixed",
    "approx_sign", "restore_weight", "restore_activation", "restore_weight_train", "restore_activation_train",
    "two_sided_quantile", "pack_signs", "unpack_signs", "binary_conv2d", "binary_linear",
    "RestoredConv2d", "restored_conv2d", "ERConv2dStep",
]


class ApproxSignFn(torch.autograd.Function):
    """apply(x, s, b, native) -> s = sign(x) (computed by ops.approx_sign); backward
    dL/dx = g * (h / b) * (1 - tanh(x / b)^2), h = max(b, 1)."""

    @staticmethod
    def forward(ctx, x, s, b, native):
        ctx.save_for_backward(x, b)
        ctx.native = native
        return s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, b = ctx.saved_tensors
        return ops.approx_sign_backward(grad.contiguous(), x, b, native=ctx.native), None, None, None


class RestoreWeight(torch.autograd.Function):
    """apply(w, w_b, mean, alpha, b, native) -> w_b (from ops.restore_weight*); backward through the
    surrogate of width b and the standardisation (method.md section 1)."""

    @staticmethod
    def forward(ctx, w, w_b, mean, alpha, b, native):
        ctx.save_for_backward(w, mean, alpha, b)
        ctx.native = native
        return w_b

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_wb):
        w, mean, alpha, b = ctx.saved_tensors
        dw = ops.restore_weight_backward(grad_wb.contiguous(), w, mean, alpha, b, native=ctx.native)
        return dw, None, None, None, None, None


class RestoreActivation(torch.autograd.Function):
    """apply(x, y, mean, sigma, sample_rms, b, native) -> y (from ops.restore_activation*); backward with
    mean and sigma differentiable (method.md section 2)."""

    @staticmethod
    def forward(ctx, x, y, mean, sigma, rms, b, native):
        ctx.save_for_backward(x, mean, sigma, rms, b)
        ctx.native = native
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, mean, sigma, rms, b = ctx.saved_tensors
        dx = ops.restore_activation_backward(grad_y.contiguous(), x, mean, sigma, rms, b, native=ctx.native)
        return dx, None, None, None, None, None, None


class RestoreActivationFixed(torch.autograd.Function):
    """apply(x, y, mean, sigma, b, native) -> y (from ops.restore_activation_fixed); backward
    g * surrogate'((x - mean) / sigma) with the statistics held fixed."""

    @staticmethod
    def forward(ctx, x, y, mean, sigma, b, native):
        ctx.save_for_backward(x, mean, sigma, b)
        ctx.native = native
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, mean, sigma, b = ctx.saved_tensors
        dx = ops.restore_activation_fixed_backward(grad_y.contiguous(), x, mean, sigma, b, native=ctx.native)
        return dx, None, None, None, None, None


class RestoredConv2d(torch.autograd.Function):
    """apply(y, w_b, mean, sigma, bias, stride, padding, dilation) -> F.conv2d(y, w_b, bias, ...) for a
    restored input y = sigma * s + mean (s = +-1) and w_b = +-1, the forward by the packed XNOR-popcount
    conv: sigma * bconv(sign(y - mean), w_b) + mean * conv(1, w_b) + bias, integer-exact popcounts
    scaled once, so equal to the float conv up to its rounding. mean and sigma only name y's two values
    (no gradient: y already depends on them). The backward is F.conv2d's (aten.convolution_backward on
    y and w_b), so the gradients equal the float conv's for the same upstream gradient."""

    @staticmethod
    def forward(ctx, y, w_b, mean, sigma, bias, stride, padding, dilation):
        ctx.save_for_backward(y, w_b)
        ctx.conv = (stride, padding, dilation, None if bias is None else [bias.shape[0]])
        return _popcount_conv(y, w_b, mean, sigma, bias, stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        y, w_b = ctx.saved_tensors
        need = ctx.needs_input_grad
        gy, gw, gb = _conv_backward(grad, y, w_b, ctx.conv, need[0], need[1], need[4])
        return gy, gw, None, None, gb, None, None, None


def _popcount_conv(y, w_b, mean, sigma, bias, stride, padding, dilation, out_nhwc=None, w_packed=None):
    """RestoredConv2d's forward value: F.conv2d(y, w_b, bias, ...) by the packed popcount kernel, in F.conv2d's
    output dtype and layout (channels_last for a channels_last y; out_nhwc overrides: ERConv2dStep holds y
    in NHWC order but returns what the composition does)."""
    # |sigma|: with a negative sigma (fixed statistics) sign(y - mean) = -s, and |sigma| * bconv(-s) is
    # sigma * bconv(s)
    shift, scale = mean.detach().float().reshape(1), sigma.detach().float().abs().reshape(1)
    wp = ops.pack_conv_weight(w_b) if w_packed is None else w_packed
    out = ops.binary_conv2d_packed(y, wp, stride, padding, dilation, x_shift=shift,
                                   out_scale=scale, ones_scale=shift,
                                   out_bias=None if bias is None else bias.detach().float())
    if _nhwc.is_nhwc(y) if out_nhwc is None else out_nhwc:
        out = _nhwc.channels_last(out)
    return out.to(y.dtype)


def _conv_backward(grad, y, w_b, conv, need_y, need_w, need_bias):
    """F.conv2d's backward (aten.convolution_backward) for conv = (stride, padding, dilation, bias_sizes)."""
    stride, padding, dilation, bias_sizes = conv
    mask = [need_y, need_w, bias_sizes is not None and need_bias]
    return torch.ops.aten.convolution_backward(grad, y, w_b, bias_sizes, list(stride), list(padding),
                                               list(dilation), False, [0, 0], 1, mask)


class ERConv2dStep(torch.autograd.Function):
    """apply(x, w, bias, weight_state, act_state, conv, nhwc, lean) -> an ERBinaryConv2d training step as ONE
    autograd node: restore_weight_train and restore_activation_train (state: their ring and width buffers,
    updated in place), the popcount forward conv, and in the backward the conv's backward followed by the
    two restorations' backward ops. The same ops as the composition RestoreWeight + RestoreActivation +
    RestoredConv2d, without two autograd nodes and their Python glue per step. conv = (stride, padding,
    dilation). Eager native CPU only (ERBinaryConv2d decides).

    nhwc: the conv backward runs on the restored y as NHWC rows (_nhwc.py), channels_last tensors
    (oneDNN's fast layout, no reorders): for NCHW x, restore_activation_train_nhwc writes y in that order,
    and its packed signs, which the popcount conv reads instead of y; _restore_activation_backward_nhwc
    reads grad_y in that order (tiles transposed in cache, no transpose pass); a channels_last x is
    restored as its rows. The forward values and the state are the NCHW step's; the backward's float sums
    (the conv's, the restoration's) are taken in another order and may round differently.

    lean: the step keeps y's and w_b's packed signs (1 bit per value) for the backward instead of the
    float tensors: the forward writes no y (restore_activation_train_bits: the statistics, the state and
    the signs), and the backward writes y and w_b, bit for bit, in one pass each (ops.unpack_restored)
    right before the conv backward reads them (in cache), in the order `nhwc` asks for. The step then holds
    what a float conv's does (its input x and weight) instead of x, y, w and w_b. Outputs, gradients and
    state equal the non-lean step's bit for bit.

    amp (a dtype, under CPU autocast): x is float32 (the caller casts it), the restorations and the exact
    popcount conv run as without it and the output is returned in `amp`; the backward runs the conv's
    backward in `amp` on y and w_b cast to it (as autocast's F.conv2d would have them), the restorations'
    backward in float32."""

    @staticmethod
    def forward(ctx, x, w, bias, weight_state, act_state, conv, nhwc, lean=False, amp=None):
        w_b, w_mean, alpha, w_width = ops.restore_weight_train(w.detach(), *weight_state, native=True)
        wp = ops.pack_conv_weight(w_b)
        if lean:  # w_b's signs are the packed weights' bytes
            w_b = _nhwc.sign_bytes(wp, w.shape[1])
        xs, x_nhwc = x.detach(), _nhwc.is_nhwc(x)
        n, c, h, wd = x.shape
        ctx.conv = (*conv, None if bias is None else [bias.shape[0]])
        ctx.x_layout = (x.shape, x_nhwc) if nhwc else None
        ctx.y_shape, ctx.lean, ctx.amp = x.shape, lean, amp
        out_dtype = amp or x.dtype
        bias_f = None if bias is None else bias.detach().float()
        if not x_nhwc and (nhwc or lean):
            # NCHW x, read as it is; the op writes y's packed signs, which the popcount conv reads instead of y,
            # and (not lean) y as NHWC rows
            x3 = xs.reshape(n, c, -1)
            if lean:
                mean, sigma, rms, x_width, bits = ops.restore_activation_train_bits(x3, *act_state, native=True)
                y_kept = _nhwc.sign_bytes(bits, c)
            else:
                yr, mean, sigma, rms, x_width, bits = ops.restore_activation_train_nhwc(x3, *act_state, native=True)
                y_kept = _nhwc.as_nchw(yr, x.shape)
            if nhwc:
                xs = x3  # the NHWC backward op's x
            ctx.save_for_backward(xs, w, y_kept, w_b, w_mean, alpha, w_width, mean, sigma, rms, x_width)
            # sigma >= 0 (batch statistics); 0-dim float32 scalars, broadcast by the op
            return ops.binary_conv2d_bits(bits.view(n, h, wd, -1), wp, *conv, in_channels=c, out_scale=sigma,
                                          ones_scale=mean, out_bias=bias_f)[0].to(out_dtype)
        rows = nhwc and x_nhwc
        if rows:  # channels_last x: its NHWC rows are a view, restored as they are
            xs = _nhwc.rows(xs)
        yr, mean, sigma, rms, x_width = ops.restore_activation_train(xs, *act_state, native=True)
        y = _nhwc.as_nchw(yr, x.shape) if rows else yr
        # contiguous NCHW out, as the composition's (its restored y is contiguous whatever x's layout)
        out = _popcount_conv(y, w_b, mean, sigma, bias, *conv, out_nhwc=False, w_packed=wp)
        if lean:  # (a channels_last x) sign(y - (mean + sigma)) = +1 exactly where y is mean + sigma
            hi = mean + sigma
            bits = ops.pack_signs(yr - hi, dim=2) if rows else ops.pack_signs(yr - hi, dim=1).view(n, h * wd, -1)
            y = _nhwc.sign_bytes(bits, c)
        ctx.save_for_backward(xs, w, y, w_b, w_mean, alpha, w_width, mean, sigma, rms, x_width)
        return out.to(out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        xs, w, y, w_b, w_mean, alpha, w_width, mean, sigma, rms, x_width = ctx.saved_tensors
        need = ctx.needs_input_grad
        if ctx.lean:  # straight in the autocast dtype where the step has one
            w_b, y = _unpack_step(w_b, w.shape, y, ctx.y_shape, mean, sigma, ctx.x_layout is not None, ctx.amp)
        if ctx.x_layout is not None:
            grad = _nhwc.channels_last(grad)
        if ctx.amp is not None:
            grad, y, w_b = grad.to(ctx.amp), y.to(ctx.amp), w_b.to(ctx.amp)
        if ctx.amp is not None or ctx.x_layout is None:
            gy, gwb, gb = _conv_backward(grad, y, w_b, ctx.conv, need[0], need[1], need[2])
            del y
        else:
            # NHWC: the conv's weight gradient first, then its input gradient (the two oneDNN primitives that
            # convolution_backward runs anyway): y goes before gy arrives, and grad (the channels_last copy)
            # before dx does, so the step's backward holds two activations of this layer at a time, not three.
            # The input gradient reads y's shape and strides only: a stand-in of them over x's memory. (NCHW
            # tensors, > 128 channels, are reordered by oneDNN in each call: one call there, 1-2.5% faster.)
            _, gwb, gb = _conv_backward(grad, y, w_b, ctx.conv, False, need[1], need[2])
            like_y = _stand_in(y, xs)
            del y
            gy = _conv_backward(grad, like_y, w_b, ctx.conv, True, False, False)[0] if need[0] else None
        del grad, w_b
        if ctx.amp is not None:
            # gy stays in bfloat16 for the NHWC restoration backward, which widens it as it reads it
            keep = ctx.x_layout is not None and gy is not None and gy.dtype == torch.bfloat16
            gy, gwb, gb = (t if t is None or (keep and t is gy) else t.to(xs.dtype) for t in (gy, gwb, gb))
        dx = dw = None
        if gy is not None and ctx.x_layout is None:
            dx = ops.restore_activation_backward(gy.contiguous(), xs.view(gy.shape), mean, sigma, rms, x_width,
                                                 native=True)
        elif gy is not None:
            shape, x_nhwc = ctx.x_layout
            if x_nhwc:  # dx in x's channels_last layout: the rows as they are
                dx = _nhwc.as_nchw(ops.restore_activation_backward(_nhwc.rows(gy), xs, mean, sigma, rms, x_width,
                                                                   native=True), shape)
            else:  # NCHW x, grad_y read as NHWC rows by the op's sums pass
                dx = ops.restore_activation_backward_nhwc(_nhwc.rows(gy), xs, mean, sigma, rms, x_width,
                                                          native=True).view(shape)
        del gy
        if gwb is not None:
            dw = ops.restore_weight_backward(gwb.contiguous(), w, w_mean, alpha, w_width, native=True)
        return dx, dw, gb, None, None, None, None, None, None


def _stand_in(y, xs):
    """A tensor of y's shape and strides over xs's memory (the step's saved x, as many values as y), for
    the conv's input gradient, which reads its input's metadata only; y itself where xs's storage is too
    small for that (an expanded x)."""
    if xs.dtype == y.dtype and xs.untyped_storage().nbytes() >= (xs.storage_offset() + y.numel()) * y.element_size():
        return xs.as_strided(y.shape, y.stride())
    return y


_PLUS_MINUS_ONE = (torch.zeros(()), torch.ones(()))  # (mean, sigma) of w_b = +-1, float32


def _unpack_step(w_bytes, w_shape, y_bytes, y_shape, mean, sigma, rows, dtype=None):
    """The lean step's w_b [O, C, kh, kw] (contiguous, +-1) and y of y_shape [N, C, H, W] (NHWC rows in
    channels_last memory with `rows`, else contiguous) from their sign bytes: one ops.unpack_restored pass
    each, in dtype (default the statistics' dtype)."""
    o, c, kh, kw = w_shape
    w_b = ops.unpack_restored(w_bytes.view(o, kh * kw, -1), c, *_PLUS_MINUS_ONE, True, dtype,
                              native=True).view(w_shape)
    y = ops.unpack_restored(y_bytes, y_shape[1], mean, sigma, not rows, dtype, native=True)
    return w_b, (_nhwc.as_nchw(y, y_shape) if rows else y.view(y_shape))


def xnor_trains(y: torch.Tensor) -> bool:
    """Whether restored_conv2d runs its forward on the packed XNOR-popcount kernel: native backend, a
    float32 CPU input outside autocast and outside torch.compile (float64 keeps exact float semantics,
    autocast its conv dtype; torch 2.11's compiler drops the gradient of RestoredConv2d, zero for the
    input and the weight; the CUDA binary conv has not been measured against cuDNN, so CUDA keeps the
    float conv)."""
    return y.dtype == torch.float32 and not torch.is_autocast_enabled("cpu") and _popcount_runs(y)


def amp_step_dtype(x: torch.Tensor):
    """The autocast dtype an ER layer's fused step runs its conv backward in (ERConv2dStep's amp), or None:
    CPU autocast in bfloat16, a float32 or bfloat16 CPU input, outside torch.compile, native kernels."""
    if (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and x.dtype in (torch.float32, torch.bfloat16) and _popcount_runs(x)):
        return torch.bfloat16
    return None


def _popcount_runs(x: torch.Tensor) -> bool:
    """What both training forms on the popcount kernel need: a CPU input, eager mode, native kernels."""
    return (x.device.type == "cpu" and not torch.compiler.is_compiling() and ops.native_now()
            and ops.kernel_runs_on("binary_conv2d_packed", x.device))


def restored_conv2d(y, w_b, mean, sigma, bias=None, stride=1, padding=0, dilation=1, xnor=None):
    """F.conv2d(y, w_b, bias, stride, padding, dilation) for ER-BNN's restored input y (restore_activation's
    output with batch statistics mean, sigma) and restored weights w_b = +-1 (groups 1, zero padding).
    With xnor (default: xnor_trains(y)) the forward runs the packed XNOR-popcount kernel (RestoredConv2d:
    the float conv up to rounding, several times faster); the gradients are F.conv2d's either way."""
    stride, padding, dilation = (pair(v, n) for v, n in ((stride, "stride"), (padding, "padding"),
                                                         (dilation, "dilation")))
    same_dtype = w_b.dtype == y.dtype and (bias is None or bias.dtype == y.dtype)
    if xnor is None:
        xnor = same_dtype and xnor_trains(y)
    if not xnor:
        return torch.nn.functional.conv2d(y, w_b, bias, stride, padding, dilation)
    if not same_dtype:  # as F.conv2d, which the backward runs, would refuse it
        raise ValueError(f"restored_conv2d: w_b ({w_b.dtype}) and bias "
                         f"({None if bias is None else bias.dtype}) must have y's dtype ({y.dtype})")
    return RestoredConv2d.apply(y, w_b, mean, sigma, bias, stride, padding, dilation)


def approx_sign(x, b=1.0):
    """sign(x) with ER-BNN's tanh surrogate gradient of width b (method.md section 3).

    Example: ``y = approx_sign(x, b=0.5)``.
    """
    native = ops.native_now()
    return ApproxSignFn.apply(x, ops.approx_sign(x.detach(), native=native), as_width(b, x), native)


def restore_weight(w, b=1.0):
    """Per output channel (dim 0): mean, population RMS alpha, w_b = sign((w - mean) / alpha).

    Args: w [O, ...] float tensor; b: surrogate width (float or 0-dim tensor).
    Returns (w_b, mean, alpha): w_b like w (contiguous) in {-1, +1}; mean, alpha [O] float32 (float64 for
    float64 w). Gradient: g = dL/dw_b * (h/b)(1 - tanh(What/b)^2), dL/dw = (g - mean(g) - What*mean(g*What))
    / alpha, with alpha floored at 1e-12 (a constant channel gives w_b = +1 and a finite gradient).
    Non-finite w: on CPU a ValueError naming w; on CUDA the forward does not synchronise with the host
    to check, so NaN/Inf propagate instead (that channel's mean/alpha are NaN or Inf, its w_b is NaN).
    """
    native = ops.native_now()
    w_b, mean, alpha = ops.restore_weight(w.detach(), native=native)
    return RestoreWeight.apply(w, w_b, mean, alpha, as_width(b, w), native), mean, alpha


def restore_weight_train(w, p, q_values, q_count, width, min_width=0.1):
    """restore_weight plus the training step's width measurement, in one op (method.md sections 1, 3).

    q = two_sided_quantile((w - mean_o) / alpha_o, p) is pushed into the ring (q_values [R] float64,
    q_count 0-dim int64) and width (0-dim float64) becomes max(mean of the filled ring, min_width), all
    in place; the returned w_b's surrogate uses that new width. p: 0-dim tensor (read on its device).
    Returns (w_b, mean, alpha) as restore_weight. An empty w changes no state.
    """
    native = ops.native_now()
    w_b, mean, alpha, b = ops.restore_weight_train(w.detach(), p, q_values, q_count, width, min_width,
                                                   native=native)
    return RestoreWeight.apply(w, w_b, mean, alpha, b, native), mean, alpha


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
    native = ops.native_now()
    if stats is None:
        y, mean, sigma, rms = ops.restore_activation(x.detach(), native=native)
        return RestoreActivation.apply(x, y, mean, sigma, rms, as_width(b, x), native), mean, sigma
    acc = acc_dtype(x.dtype)
    mean, sigma = (torch.as_tensor(s, dtype=acc, device=x.device).detach().reshape(()) for s in stats)
    y = ops.restore_activation_fixed(x.detach(), mean, sigma, native=native)
    return RestoreActivationFixed.apply(x, y, mean, sigma, as_width(b, x), native), mean, sigma


def restore_activation_train(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values,
                             sigma_count, min_width=0.1):
    """restore_activation with batch statistics plus the training step's bookkeeping, in one op: q of
    xhat = (x - mean) / sigma into the q ring and the new width (as restore_weight_train), and (mean,
    sigma) pushed into their rings (values [S] float64, count 0-dim int64). Returns (y, mean, sigma).
    An empty x changes no state."""
    native = ops.native_now()
    y, mean, sigma, rms, b = ops.restore_activation_train(
        x.detach(), p, q_values, q_count, width, mean_values, mean_count, sigma_values, sigma_count, min_width,
        native=native)
    return RestoreActivation.apply(x, y, mean, sigma, rms, b, native), mean, sigma


def two_sided_quantile(x, p):
    """max(Q_p(|x[x<=0]|), Q_p(x[x>=0])), linear interpolation as numpy.quantile, exact over all
    elements (selection, not sorting, in the native kernels). One half empty -> the other's. 0-dim float32.
    p: float or 0-dim tensor. NaN/Inf in x: ValueError, except with the native CUDA kernel, which returns
    NaN (no host sync)."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    with torch.no_grad():
        return ops.two_sided_quantile(x.detach(), p)


def pack_signs(x, dim=1):
    """Pack sign bits of x along `dim` into integer words; returns (packed, n), n = x.shape[dim].

    Layout: `dim` is moved last and replaced by ceil(n / W) words, W = 64 (int64) on CPU and 32 (int32)
    on CUDA; bit j of word k holds element k*W + j (1 for x >= 0, i.e. +1); tail bits are 0.
    """
    if x.dim() == 0:
        raise ValueError("pack_signs: x must have at least 1 dimension")
    return ops.pack_signs(x, dim), x.shape[dim]


def unpack_signs(packed, n, dim=1):
    """Inverse of pack_signs: float32 +-1 with the packed axis (length n) back at `dim`."""
    return ops.unpack_signs(packed, n, dim)


def binary_conv2d(x, w, stride=1, padding=0, dilation=1):
    """Exactly F.conv2d(sign(x), sign(w), stride, padding, dilation) with zero padding; float32 output
    holding integers. x: [N, C, H, W], w: [O, C, kh, kw]; groups = 1. Inference op (no gradient)."""
    return ops.binary_conv2d(x, w, pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation"))


def binary_linear(x, w):
    """Exactly sign(x) @ sign(w).T in float32. x: [..., K], w: [O, K]. Inference op."""
    return ops.binary_linear(x, w)
