"""Pure-PyTorch reference twins of every torch.ops.erbnn op: the fallback backend and the tests' truth.

Each op has the same name and signature as its native twin (see csrc/ops.cpp). Arithmetic runs in
float32 for float32/float16/bfloat16 inputs and in float64 for float64 inputs. The `*_autograd`
functions at the end implement method.md straight from the formulas with torch autograd (only the sign
has a hand-written surrogate), so that the explicit backward formulas can be checked against them.
"""
import math

import torch
import torch.nn.functional as F

from ._common import (EPS, FLOAT_DTYPES, acc_dtype, as_width, dtype_bits, ring_mean, ring_push, sign,  # noqa: F401
                      word_bits, word_dtype)


# ---------------------------------------------------------------------------------------------- helpers
def check_float(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}")


def check_finite(x, name):
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def check_not_nan(x, name):
    """The sign-only ops (packing, the binary convs' inputs) take +-Inf, whose sign is defined, as the
    native kernels do; NaN has none."""
    if x.numel() and bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN: its sign is undefined")


def surrogate_grad(x, b):
    """(h / b) * (1 - tanh(x / b)^2) with h = max(b, 1) (method.md section 3)."""
    b = as_width(b, x).to(x.dtype)
    return (b.clamp_min(1) / b) * (1 - torch.tanh(x / b) ** 2)


# ------------------------------------------------------------------------------------------ approx_sign
def approx_sign(x):
    check_float(x, "x")
    return sign(x)


def approx_sign_backward(grad, x, b):
    acc = acc_dtype(x.dtype)
    return (grad.to(acc) * surrogate_grad(x.to(acc), b)).to(x.dtype)


# --------------------------------------------------------------------------------------- restore_weight
def _weight_rows(w):
    check_float(w, "w")
    if w.dim() < 1:
        raise ValueError(f"w must have at least 1 dimension (output channels first), got {w.dim()}-D")
    check_finite(w, "w")
    return w.reshape(w.shape[0], math.prod(w.shape[1:])).to(acc_dtype(w.dtype))


def restore_weight(w):
    """(w_b, mean, alpha): per output channel mean and population RMS, w_b = sign((w - mean) / alpha)."""
    rows = _weight_rows(w)
    if rows.shape[1] == 0:
        z = rows.new_zeros(rows.shape[0])
        return torch.ones_like(w), z, z.clone()
    mean = rows.mean(1)
    alpha = (rows - mean[:, None]).pow(2).mean(1).sqrt()
    what = (rows - mean[:, None]) / alpha.clamp_min(EPS)[:, None]
    return sign(what).reshape(w.shape).to(w.dtype), mean, alpha


def restore_weight_backward(grad_wb, w, mean, alpha, b):
    """dL/dW = (g - mean(g) - What * mean(g * What)) / alpha, g = dL/dW_b * surrogate'(What)."""
    rows = _weight_rows(w)
    if rows.numel() == 0:
        return torch.zeros_like(w)
    acc = rows.dtype
    a = alpha.to(acc).clamp_min(EPS)[:, None]
    what = (rows - mean.to(acc)[:, None]) / a
    g = grad_wb.reshape(rows.shape).to(acc) * surrogate_grad(what, b)
    dw = (g - g.mean(1, keepdim=True) - what * (g * what).mean(1, keepdim=True)) / a
    return dw.reshape(w.shape).to(w.dtype)


# ----------------------------------------------------------------------------------- restore_activation
def _activation_rows(x):
    check_float(x, "x")
    if x.dim() < 1:
        raise ValueError(f"x must have a batch dimension, got a {x.dim()}-D tensor")
    check_finite(x, "x")
    return x.reshape(x.shape[0], math.prod(x.shape[1:])).to(acc_dtype(x.dtype))


def restore_activation(x):
    """(y, mean, sigma, sample_rms): batch statistics of method.md section 2.

    mean = mean(x); sample_rms[n] = sqrt(mean_d (x[n] - mean)^2); sigma = mean_n sample_rms[n];
    y = sigma * sign((x - mean) / sigma) + mean.
    """
    rows = _activation_rows(x)
    acc = rows.dtype
    if rows.numel() == 0:
        z = torch.zeros((), dtype=acc, device=x.device)
        return torch.empty_like(x), z, z.clone(), rows.new_zeros(rows.shape[0])
    mean = rows.mean()
    rms = (rows - mean).pow(2).mean(1).sqrt()
    sigma = rms.mean()
    return restore_activation_fixed(x, mean, sigma), mean, sigma, rms


def restore_activation_backward(grad_y, x, mean, sigma, sample_rms, b):
    """Backward of restore_activation with mean and sigma differentiable (derivation in docs)."""
    rows = _activation_rows(x)
    acc = rows.dtype
    if rows.numel() == 0:
        return torch.zeros_like(x)
    n, d = rows.shape
    mu, sig = mean.to(acc), sigma.to(acc)
    r = sample_rms.to(acc).clamp_min(EPS)
    xc = rows - mu
    xhat = xc / sig.clamp_min(EPS)
    g = grad_y.reshape(rows.shape).to(acc)
    gs = g * surrogate_grad(xhat, b)
    g_sigma = (g * sign(xhat)).sum() - (gs * xhat).sum()
    dsigma_dmu = -((xc.mean(1)) / r).sum() / n
    g_mu = g.sum() - gs.sum() + g_sigma * dsigma_dmu
    dx = gs + g_sigma * xc / (n * d * r[:, None]) + g_mu / (n * d)
    return dx.reshape(x.shape).to(x.dtype)


def restore_activation_backward_nhwc(grad_y, x, mean, sigma, sample_rms, b):
    """restore_activation_backward for x [N, C, P] with grad_y as its NHWC rows [N, P, C]."""
    if x.dim() != 3:
        raise ValueError(f"x must be [N, C, H*W], got {x.dim()}-D")
    if grad_y.shape != (x.shape[0], x.shape[2], x.shape[1]):
        raise ValueError(f"grad_y must be x's NHWC rows {(x.shape[0], x.shape[2], x.shape[1])}, "
                         f"got {tuple(grad_y.shape)}")
    return restore_activation_backward(batch_transpose(grad_y), x, mean, sigma, sample_rms, b)


def restore_activation_fixed(x, mean, sigma):
    """y = sigma * sign((x - mean) / sigma) + mean with given 0-dim statistics."""
    check_float(x, "x")
    acc = acc_dtype(x.dtype)
    mu, sig = torch.as_tensor(mean, dtype=acc), torch.as_tensor(sigma, dtype=acc)
    xf = x.to(acc)
    xhat = (xf - mu.to(x.device)) / sig.to(x.device).clamp_min(EPS)
    return (sig.to(x.device) * sign(xhat) + mu.to(x.device)).to(x.dtype)


def restore_activation_fixed_backward(grad_y, x, mean, sigma, b):
    """dL/dx = g * surrogate'((x - mean) / sigma): sigma * surrogate' / sigma."""
    acc = acc_dtype(x.dtype)
    sig = torch.as_tensor(sigma, dtype=acc, device=x.device)
    xhat = (x.to(acc) - torch.as_tensor(mean, dtype=acc, device=x.device)) / sig.clamp_min(EPS)
    scale = sig / sig.clamp_min(EPS)
    return (grad_y.to(acc) * surrogate_grad(xhat, b) * scale).to(x.dtype)


# ------------------------------------------------------------------------------------ quantile by sort
def _quantile_sorted(v, p):
    """numpy.quantile(method="linear") of a sorted 1-D float64 tensor."""
    n = v.numel()
    h = (n - 1) * p
    lo = min(int(math.floor(h)), n - 1)
    hi = min(lo + 1, n - 1)
    return v[lo] + (h - lo) * (v[hi] - v[lo])


def two_sided_quantile(x, p):
    """max(Q_p(|x[x<=0]|), Q_p(x[x>=0])) with linear interpolation, exact (sorts: the reference)."""
    check_float(x, "x")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if x.numel() == 0:
        raise ValueError("two_sided_quantile: x is empty")
    check_finite(x, "x")
    flat = x.reshape(-1).double()
    neg, pos = -flat[flat <= 0], flat[flat >= 0]
    qs = [_quantile_sorted(torch.sort(h).values, p) for h in (neg, pos) if h.numel()]
    return torch.stack(qs).max().to(torch.float32)


# ------------------------------------------------------------------- training step of one layer side
def _measure_width(xhat, p, q_values, q_count, width, min_width):
    """q = two_sided_quantile(xhat, p) pushed into the q ring; width = max(ring mean, min_width)."""
    ring_push(q_values, q_count, two_sided_quantile(xhat, float(p)))
    width[...] = ring_mean(q_values, q_count).clamp_min(min_width)  # not copy_: see nn.ApproxSign.observe


def restore_weight_train(w, p, q_values, q_count, width, min_width):
    """restore_weight(w) plus this step's width measurement (method.md sections 1 and 3), in one call.

    q = two_sided_quantile(What, p) with What = (w - mean_o) / max(alpha_o, EPS) in the accumulation
    dtype; q enters the ring (q_values, q_count), width = max(ring mean, min_width) (all updated in
    place). Returns (w_b, mean, alpha, b_step), b_step = the new width as a 0-dim acc-dtype tensor.
    An empty w changes no state."""
    w_b, mean, alpha = restore_weight(w)
    if w.numel():
        shape = (-1,) + (1,) * (w.dim() - 1)
        what = (w.to(mean.dtype) - mean.view(shape)) / alpha.clamp_min(EPS).view(shape)
        _measure_width(what, p, q_values, q_count, width, min_width)
    return w_b, mean, alpha, width.to(mean.dtype).clone()


def restore_activation_train(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values,
                             sigma_count, min_width):
    """restore_activation(x) plus the width measurement on xhat = (x - mean) / max(sigma, EPS) and the
    push of (mean, sigma) into the statistics rings, in one call. Returns (y, mean, sigma, sample_rms,
    b_step). An empty x changes no state."""
    y, mean, sigma, rms = restore_activation(x)
    if x.numel():
        xhat = (x.to(mean.dtype) - mean) / sigma.clamp_min(EPS)
        _measure_width(xhat, p, q_values, q_count, width, min_width)
        ring_push(mean_values, mean_count, mean)
        ring_push(sigma_values, sigma_count, sigma)
    return y, mean, sigma, rms, width.to(mean.dtype).clone()


def restore_activation_train_nhwc(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values,
                                  sigma_count, min_width):
    """restore_activation_train for x [N, C, P], y returned as its NHWC rows [N, P, C], plus y_bits =
    pack_signs(y - mean, dim=2)."""
    if x.dim() != 3:
        raise ValueError(f"x must be [N, C, H*W], got {x.dim()}-D")
    y, mean, *rest = restore_activation_train(x, p, q_values, q_count, width, mean_values, mean_count,
                                              sigma_values, sigma_count, min_width)
    rows = batch_transpose(y)
    bits = pack_signs(torch.where(rows.to(mean.dtype) >= mean, 1.0, -1.0), dim=2)
    return (rows, mean, *rest, bits)


def restore_activation_train_bits(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values,
                                  sigma_count, min_width):
    """restore_activation_train_nhwc without y: (mean, sigma, sample_rms, b_step, y_bits)."""
    _, mean, sigma, rms, b, bits = restore_activation_train_nhwc(x, p, q_values, q_count, width, mean_values,
                                                                 mean_count, sigma_values, sigma_count, min_width)
    return mean, sigma, rms, b, bits


# -------------------------------------------------------------------------------------------- packing
def unpack_restored(bits, channels, mean, sigma, channels_first, dtype=None):
    """A restored tensor from its packed sign bytes: bits uint8 [N, P, B] (bit j of byte k = channel 8k + j,
    B >= ceil(channels / 8)); mean + sigma where the bit is set, else mean - sigma (0-dim float32 or float64
    sums), as [N, P, channels], or [N, channels, P] with channels_first; in dtype (default mean's), the two
    values rounded once to it."""
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    if bits.dtype != torch.uint8:
        raise TypeError(f"bits must be uint8 (packed sign bytes), got {bits.dtype}")
    if bits.dim() != 3:
        raise ValueError(f"bits must be 3-D [N, P, bytes], got {bits.dim()}-D")
    if channels < 0 or bits.shape[2] * 8 < channels:
        raise ValueError(f"channels must be in [0, {bits.shape[2] * 8}] (the bits per row), got {channels}")
    if mean.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"mean must be float32 or float64, got {mean.dtype}")
    if sigma.dtype != mean.dtype:
        raise TypeError(f"sigma must have mean's dtype ({mean.dtype}), got {sigma.dtype}")
    if mean.numel() != 1 or sigma.numel() != 1:
        raise ValueError(f"mean and sigma must hold one value each, got {mean.numel()} and {sigma.numel()}")
    n, p, nb = bits.shape
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    set_ = ((bits[..., None] >> shifts) & 1).reshape(n, p, nb * 8)[..., :channels].bool()
    mean, sigma = mean.reshape(()), sigma.reshape(())
    out = torch.where(set_, sigma + mean, mean - sigma).to(dtype or mean.dtype)
    return out.transpose(1, 2).contiguous() if channels_first else out.contiguous()


def batch_transpose(x):
    """x [B, R, S] -> x.transpose(1, 2).contiguous() [B, S, R]."""
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D [B, R, S], got {x.dim()}-D")
    return x.transpose(1, 2).contiguous()


def pack_signs(x, dim=1):
    """Sign bits of x along `dim` packed into words: the result has `dim` moved last and replaced by
    ceil(n / W) words (W = 64, int64 on CPU; 32, int32 on CUDA). Bit j of word k holds element k*W + j
    (1 for x >= 0); tail bits past n are 0."""
    check_float(x, "x")
    check_not_nan(x, "x")
    dim = dim % x.dim()
    n = x.shape[dim]
    bits = word_bits(x.device)
    words = (n + bits - 1) // bits
    b = (x.movedim(dim, -1) >= 0).to(torch.int64)
    b = F.pad(b, (0, words * bits - n)).reshape(*b.shape[:-1], words, bits)
    shifts = torch.arange(bits, device=x.device, dtype=torch.int64)
    packed = (b << shifts).sum(-1)  # distinct bits: the sum is the OR (mod 2^64)
    if bits == 32:
        packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    return packed.contiguous()


def unpack_signs(packed, n, dim=1):
    """Inverse of pack_signs: a float32 tensor of +-1 with the packed axis restored at `dim`."""
    bits = dtype_bits(packed.dtype)
    shifts = torch.arange(bits, device=packed.device, dtype=torch.int64)
    b = (packed.to(torch.int64)[..., None] >> shifts) & 1
    b = b.reshape(*packed.shape[:-1], packed.shape[-1] * bits)[..., :n]  # (also for an empty packed)
    out = b.to(torch.float32) * 2 - 1
    # contiguous, as the native op's: a moved axis of length 1 leaves odd strides (e.g. (49, 1, 7, 1) for
    # a [O, 1, 7, 7] weight), on which torch's float32 conv has given wrong results
    return out.movedim(-1, dim % out.dim()).contiguous()


# ------------------------------------------------------------------------------------ binary conv/GEMM
def binary_conv2d(x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """F.conv2d(sign(x), sign(w)) with zero padding, float32 (integer values)."""
    check_float(x, "x")
    check_float(w, "w")
    check_not_nan(x, "x")
    check_not_nan(w, "w")
    # sign before the cast: a float64 -1e-50 rounds to -0.0 in float32, whose sign would be +1
    return F.conv2d(sign(x).float(), sign(w).float(), stride=stride, padding=padding, dilation=dilation)


def binary_linear(x, w):
    """sign(x) @ sign(w).T, float32."""
    check_float(x, "x")
    check_float(w, "w")
    check_not_nan(x, "x")
    check_not_nan(w, "w")
    return sign(x).float() @ sign(w).float().t()


def pack_conv_weight(w):
    """w [O, C, kh, kw] -> sign words [O, kh, kw, ceil(C / W)] along C (pack_signs layout, W by device)."""
    check_float(w, "w")
    if w.dim() != 4:
        raise ValueError(f"w must be 4-D [O, C, kh, kw], got {w.dim()}-D")
    return pack_signs(w.permute(0, 2, 3, 1), dim=-1)


def _per_channel(t, o, name):
    if t is None:
        return None
    t = t.reshape(-1).float()
    if t.numel() not in (1, o):
        raise ValueError(f"{name} must have 1 or O = {o} elements, got {t.numel()}")
    return t.expand(o).reshape(1, o, 1, 1)


def binary_conv2d_packed(x, w_packed, stride=(1, 1), padding=(0, 0), dilation=(1, 1), x_shift=None,
                         out_scale=None, out_bias=None, ones_scale=None, residual=None, act=None):
    """out_scale[o] * conv(sign(x - x_shift), W_b) + out_bias[o] + ones_scale[o] * conv(1, W_b), zero
    padding, always float32; W_b = unpack of w_packed (pack_conv_weight) with C = x.shape[1]; x_shift
    None (0) or a 1-element float tensor. Then + residual, then RPReLU with act [3, O] (shift_in, slope,
    shift_out). x may hold +-Inf (only its signs are read), not NaN."""
    check_float(x, "x")
    check_not_nan(x, "x")
    if x.dim() != 4 or w_packed.dim() != 4:
        raise ValueError("x must be 4-D [N, C, H, W] and w_packed 4-D [O, kh, kw, Cw]")
    bits = dtype_bits(w_packed.dtype)
    used = x.shape[1] - (w_packed.shape[-1] - 1) * bits  # channels in each tap's last word
    if 0 < used < bits and w_packed.numel() and bool(((w_packed[..., -1] >> used) != 0).any()):
        raise ValueError(f"w_packed has bits set beyond the C = {x.shape[1]} channels of x")
    wb = unpack_signs(w_packed, x.shape[1], dim=1).to(x.device)
    if x_shift is None:
        x_shift = torch.zeros(1)
    check_float(x_shift, "x_shift")
    if x_shift.numel() != 1:
        raise ValueError(f"x_shift must hold one value, got {x_shift.numel()}")
    check_finite(x_shift, "x_shift")
    shift = x_shift.reshape(()).to(device=x.device, dtype=acc_dtype(x.dtype))
    xb = torch.where(x.to(shift.dtype) >= shift, 1.0, -1.0).float()
    conv = F.conv2d(xb, wb, stride=stride, padding=padding, dilation=dilation)
    o = wb.shape[0]
    scale, bias, ones = (_per_channel(t, o, n) for t, n in
                         ((out_scale, "out_scale"), (out_bias, "out_bias"), (ones_scale, "ones_scale")))
    out = conv if scale is None else conv * scale
    if bias is not None:
        out = out + bias
    if ones is not None:
        one = torch.ones(1, *x.shape[1:], device=x.device)
        out = out + ones * F.conv2d(one, wb, stride=stride, padding=padding, dilation=dilation)
    if residual is not None:
        if residual.shape != out.shape:
            raise ValueError(f"residual must have the output's shape {list(out.shape)}, got {list(residual.shape)}")
        out = out + residual.float()
    if act is not None:
        if act.dim() != 2 or act.shape[0] != 3 or act.shape[1] not in (1, o):
            raise ValueError(f"act must be [3, O] or [3, 1] (RPReLU shift_in, slope, shift_out), got {list(act.shape)}")
        b1, slope, b2 = (v.reshape(1, -1, 1, 1) for v in act.float())
        t = out + b1
        out = torch.where(t >= 0, t, slope * t) + b2
    return out


def binary_conv2d_bits(x, w_packed, stride=(1, 1), padding=(0, 0), dilation=(1, 1), in_channels=-1, x_shift=None,
                       out_scale=None, out_bias=None, ones_scale=None, residual=None, act=None, next_shift=None,
                       float_out=True):
    """binary_conv2d_packed with x float, or its packed signs [N, H, W, Cw] (pack_signs along C, the
    shift already applied) of in_channels channels; returns (out, out_bits): out_bits = pack_signs of
    (out >= next_shift) along the channels [N, OH, OW, Ow] (empty [0] without next_shift), out empty [0]
    with float_out=False."""
    if in_channels != -1:
        if in_channels < 1:
            raise ValueError(f"in_channels must be -1 (x is float) or >= 1 (x is packed), got {in_channels}")
        if x_shift is not None:
            raise ValueError("x_shift must be None with a packed x (its signs already hold the shift)")
        if x.dim() != 4 or x.shape[-1] != (in_channels + word_bits(x.device) - 1) // word_bits(x.device):
            raise ValueError(f"packed x must be [N, H, W, Cw] with Cw words for in_channels = {in_channels}")
        full = unpack_signs(x, x.shape[-1] * word_bits(x.device), dim=1)
        if bool((full[:, in_channels:] > 0).any()):
            raise ValueError(f"packed x has bits set beyond its in_channels = {in_channels} channels")
        x = full[:, :in_channels]
    if next_shift is None and not float_out:
        raise ValueError("float_out=False needs next_shift (the op would compute nothing)")
    out = binary_conv2d_packed(x, w_packed, stride, padding, dilation, x_shift, out_scale, out_bias, ones_scale,
                               residual, act)
    bits = out.new_empty(0, dtype=word_dtype(x.device))
    if next_shift is not None:
        check_float(next_shift, "next_shift")
        if next_shift.numel() != 1:
            raise ValueError(f"next_shift must hold one value, got {next_shift.numel()}")
        check_finite(next_shift, "next_shift")
        if bool(torch.isnan(out).any()):
            raise ValueError("the binary conv output contains NaN: the next layer's signs (next_shift) are undefined")
        shift = next_shift.reshape(()).to(device=out.device, dtype=torch.float32)
        bits = pack_signs(torch.where(out >= shift, 1.0, -1.0), dim=1)
    return (out if float_out else out.new_empty(0)), bits


# ------------------------------------------------------------- autograd ground truth (tests, float64)
class _SignSurrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b):
        ctx.save_for_backward(x, b)
        return sign(x)

    @staticmethod
    def backward(ctx, g):
        x, b = ctx.saved_tensors
        return g * surrogate_grad(x, b), None


def approx_sign_autograd(x, b):
    return _SignSurrogate.apply(x, as_width(b, x).to(x.dtype))


def restore_weight_autograd(w, b):
    """w_b with autograd through mean and alpha (method.md section 1), for gradient checks."""
    rows = w.reshape(w.shape[0], -1)
    mean = rows.mean(1, keepdim=True)
    alpha = (rows - mean).pow(2).mean(1, keepdim=True).sqrt()
    return approx_sign_autograd((rows - mean) / alpha.clamp_min(EPS), b).reshape(w.shape)


def restore_activation_autograd(x, b):
    """y with autograd through the batch mean and sigma (method.md section 2), for gradient checks."""
    rows = x.reshape(x.shape[0], -1)
    mean = rows.mean()
    sigma = (rows - mean).pow(2).mean(1).sqrt().mean()
    y = sigma * approx_sign_autograd((rows - mean) / sigma.clamp_min(EPS), b) + mean
    return y.reshape(x.shape)
