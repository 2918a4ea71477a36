"""The single dispatch point of the package: every op call, from functional, nn, deploy and the
benchmarks, goes through `resolve` below, which picks torch.ops.erbnn (native) or the reference twin.

`native` (keyword, default None = decide now from erbnn_ext.use_backend / set_backend / ERBNN_BACKEND)
lets a caller pin the choice, e.g. an autograd backward running on another thread uses the backend of
its forward. A native op whose kernel is missing for the tensor's device (a CPU-only build given a
CUDA tensor) runs the reference twin. Also here: the fake (meta) kernels for torch.compile.

Every function here has the signature of its twin in erbnn_ext.reference (plus `native`).
"""
import warnings

import torch

from . import _backend, _native, reference
from ._common import as_width, dtype_bits, pair, word_bits, word_dtype

_LIB = "erbnn"


def _op_names():
    """The kernel ops of the loaded library (csrc/ops.cpp's schemas that have a reference twin; the
    runtime knobs, torch.ops.erbnn._cpu_isa and the like, have none). Read from the dispatcher, so it
    cannot drift from the schema list."""
    if not _native.available():
        return ()
    names = (n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith(_LIB + "::"))
    return tuple(sorted(n for n in names if hasattr(reference, n.lstrip("_"))))


_OP_NAMES = _op_names()


def _registered(name):
    """The op's schema is in the loaded extension (an older build may lack newer ops)."""
    if not _native.available():
        return False
    try:
        getattr(torch.ops.erbnn, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _kernel_table():
    # Computed once at import (kernels register when the .so loads) so that the per-call lookup is a
    # plain dict access that torch.compile can trace.
    table = {}
    for name in _OP_NAMES:
        for dev, key in (("cpu", "CPU"), ("cuda", "CUDA")):
            table[(name, dev)] = _registered(name) and torch._C._dispatch_has_kernel_for_dispatch_key(
                f"{_LIB}::{name}", key)
    return table


_KERNELS = _kernel_table()


def has_kernel(op_name: str, device_type: str) -> bool:
    """Whether torch.ops.erbnn.<op_name> has a compiled kernel for device_type ("cpu", "cuda")."""
    return _KERNELS.get((op_name, device_type), False)


_warned_devices = set()


def kernel_runs_on(op_name: str, device: torch.device) -> bool:
    """A compiled kernel exists for the device type and, on CUDA, can run on this GPU (an sm_75 card
    with a build for sm_80+ cannot: its ops then run the reference, with one warning per device)."""
    if not has_kernel(op_name, device.type):
        return False
    if device.type != "cuda" or _native.cuda_supported(device):
        return True
    if device not in _warned_devices:
        _warned_devices.add(device)
        warnings.warn(f"erbnn_ext: the CUDA kernels were built for {_native.cuda_archs()} and cannot run on "
                      f"{device} ({torch.cuda.get_device_name(device)}); using the reference implementation. "
                      f"Rebuild with TORCH_CUDA_ARCH_LIST naming its architecture.", RuntimeWarning)
    return False


# (op name, device) -> its native OpOverload, for the devices kernel_runs_on accepted: both fixed for the
# process (the kernels registered at import, a GPU's architecture), so a hit is what the lookup would give.
# A frozen model's layers resolve their op per call: the lookup cost as much as a batch-1 layer's packing.
_native_ops = {}


def resolve(name, device, native=None):
    """THE backend choice: the native op when the native backend is active (or `native` is True) and a
    kernel can run on `device`, else the reference twin of the same name."""
    if native is None:
        native = _backend.native_active()
    if native:
        op = _native_ops.get((name, device))
        if op is not None:
            return op
        if kernel_runs_on(name, device):
            op = _native_ops[(name, device)] = getattr(torch.ops.erbnn, name).default
            return op
    return getattr(reference, name.lstrip("_"))


def native_now() -> bool:
    """The backend decision of this moment (for an autograd Function to record in its forward)."""
    return _backend.native_active()


def restore_weight(w, *, native=None):
    return resolve("restore_weight", w.device, native)(w)


def restore_weight_backward(grad_wb, w, mean, alpha, b, *, native=None):
    fn = resolve("_restore_weight_backward", w.device, native)
    return fn(grad_wb, w, mean, alpha, as_width(b, w, copy=False))


def restore_weight_train(w, p, q_values, q_count, width, min_width, *, native=None):
    return resolve("restore_weight_train", w.device, native)(w, p, q_values, q_count, width, float(min_width))


def restore_activation(x, *, native=None):
    return resolve("restore_activation", x.device, native)(x)


def restore_activation_backward(grad_y, x, mean, sigma, sample_rms, b, *, native=None):
    fn = resolve("_restore_activation_backward", x.device, native)
    return fn(grad_y, x, mean, sigma, sample_rms, as_width(b, x, copy=False))


def restore_activation_backward_nhwc(grad_y, x, mean, sigma, sample_rms, b, *, native=None):
    """restore_activation_backward for x [N, C, P] with grad_y as its NHWC rows [N, P, C]; dx like x."""
    fn = resolve("_restore_activation_backward_nhwc", x.device, native)
    return fn(grad_y, x, mean, sigma, sample_rms, as_width(b, x, copy=False))


def batch_transpose(x, *, native=None):
    """x [B, R, S] -> x.transpose(1, 2).contiguous() [B, S, R] (the NCHW <-> NHWC move of ERConv2dStep)."""
    return resolve("_batch_transpose", x.device, native)(x)


def unpack_restored(bits, channels, mean, sigma, channels_first=False, dtype=None, *, native=None):
    """mean +- sigma from packed sign bytes [N, P, B] (reference.unpack_restored): the lean ER step's
    rebuild of its restored y (and w_b) for the backward; dtype: the out dtype (default mean's)."""
    return resolve("_unpack_restored", bits.device, native)(bits, int(channels), mean, sigma, bool(channels_first),
                                                            dtype)


def restore_activation_train(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values,
                             sigma_count, min_width, *, native=None):
    return resolve("restore_activation_train", x.device, native)(
        x, p, q_values, q_count, width, mean_values, mean_count, sigma_values, sigma_count, float(min_width))


def restore_activation_train_nhwc(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values,
                                  sigma_count, min_width, *, native=None):
    """restore_activation_train for x [N, C, P] with y out as its NHWC rows [N, P, C]; one more output,
    y_bits = the packed signs of y - mean along C [N, P, Cw] (pack_signs' words)."""
    return resolve("restore_activation_train_nhwc", x.device, native)(
        x, p, q_values, q_count, width, mean_values, mean_count, sigma_values, sigma_count, float(min_width))


def restore_activation_train_bits(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values,
                                  sigma_count, min_width, *, native=None):
    """restore_activation_train_nhwc without y (the lean ER step): (mean, sigma, sample_rms, b_step, y_bits)."""
    return resolve("restore_activation_train_bits", x.device, native)(
        x, p, q_values, q_count, width, mean_values, mean_count, sigma_values, sigma_count, float(min_width))


def restore_activation_fixed(x, mean, sigma, *, native=None):
    return resolve("restore_activation_fixed", x.device, native)(x, mean, sigma)


def restore_activation_fixed_backward(grad_y, x, mean, sigma, b, *, native=None):
    fn = resolve("_restore_activation_fixed_backward", x.device, native)
    return fn(grad_y, x, mean, sigma, as_width(b, x, copy=False))


def approx_sign(x, *, native=None):
    return resolve("approx_sign", x.device, native)(x)


def approx_sign_backward(grad, x, b, *, native=None):
    return resolve("_approx_sign_backward", x.device, native)(grad, x, as_width(b, x, copy=False))


def two_sided_quantile(x, p, *, native=None):
    return resolve("two_sided_quantile", x.device, native)(x, float(p))


def pack_signs(x, dim=1, *, native=None):
    return resolve("pack_signs", x.device, native)(x, dim)


def unpack_signs(packed, n, dim=1, *, native=None):
    return resolve("unpack_signs", packed.device, native)(packed, n, dim)


def binary_conv2d(x, w, stride=1, padding=0, dilation=1, *, native=None):
    return resolve("binary_conv2d", x.device, native)(
        x, w, pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation"))


def binary_linear(x, w, *, native=None):
    return resolve("binary_linear", x.device, native)(x, w)


def pack_conv_weight(w, *, native=None):
    """w [O, C, kh, kw] float -> packed sign words [O, kh, kw, Cw] along C: bit j of word k = channel
    k*W + j (1 for w >= 0), tail bits 0; W = 64 (int64) on CPU, 32 (int32) on CUDA. NaN -> ValueError.
    Pack on the device that will run the conv."""
    return resolve("pack_conv_weight", w.device, native)(w)


def binary_conv2d_packed(x, w_packed, stride=1, padding=0, dilation=1, x_shift=None, out_scale=None,
                         out_bias=None, ones_scale=None, residual=None, act=None, *, native=None):
    """out[n, o] = out_scale[o] * conv(sign(x - x_shift), W_b) + out_bias[o] + ones_scale[o] * conv(1, W_b),
    then the fused block tail: + residual ([N, O, OH, OW]), then RPReLU with act = [3, O] (shift_in, slope,
    shift_out): y = PReLU(v + act[0]) + act[2] (None: skipped).

    x: [N, C, H, W] float (any layout); w_packed: pack_conv_weight(w) for w [O, C, kh, kw];
    x_shift: None (0), a float or a 1-element tensor (sign(x - x_shift) is +1 where x >= x_shift; a
    tensor is read on its device: no host sync, traceable by torch.compile); out_scale, out_bias, ones_scale: [O]
    or 1-element tensors, or None (1, 0, 0). Zero padding: out-of-frame taps contribute nothing to
    either convolution. Returns float32 [N, O, OH, OW]; with all three None it is exactly
    F.conv2d(sign(x - x_shift), W_b, ...). Inference only (no gradient). Used by eval-mode ER layers
    and deploy.freeze (an eval ERBinaryConv2d folds to out_scale = sigma, ones_scale = mu, x_shift = mu;
    a following BatchNorm a * z + c to a * sigma, c, a * mu).
    """
    if x_shift is not None and not isinstance(x_shift, torch.Tensor):
        x_shift = torch.tensor(float(x_shift), dtype=torch.float64, device=x.device)
    return resolve("binary_conv2d_packed", x.device, native)(
        x, w_packed, pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation"),
        x_shift, out_scale, out_bias, ones_scale, residual, act)


def binary_conv2d_bits(x, w_packed, stride=1, padding=0, dilation=1, in_channels=-1, x_shift=None, out_scale=None,
                       out_bias=None, ones_scale=None, residual=None, act=None, next_shift=None, float_out=True, *,
                       native=None):
    """binary_conv2d_packed chained to its neighbours (deploy.freeze). Returns (out, out_bits).

    x: float [N, C, H, W] as in binary_conv2d_packed, or (in_channels = C >= 1) its packed signs
    [N, H, W, Cw], the out_bits of the previous layer (the shift already applied: x_shift must be None).
    next_shift: None, or a 1-element float tensor: out_bits = the packed signs of out - next_shift along
    the channels [N, OH, OW, ceil(O / W)] (+1 where out >= next_shift, compared in float32; W = 64 int64
    on CPU, 32 int32 on CUDA), written by the epilogue instead of a packing pass over the floats; else
    an empty [0] tensor. float_out=False: out is an empty [0] tensor (nothing else reads the floats).
    A NaN output with next_shift raises ValueError on the CPU (its sign is undefined).
    """
    if x_shift is not None and not isinstance(x_shift, torch.Tensor):
        x_shift = torch.tensor(float(x_shift), dtype=torch.float64, device=x.device)
    if next_shift is not None and not isinstance(next_shift, torch.Tensor):
        next_shift = torch.tensor(float(next_shift), dtype=torch.float64, device=x.device)
    return resolve("binary_conv2d_bits", x.device, native)(
        x, w_packed, pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation"), int(in_channels),
        x_shift, out_scale, out_bias, ones_scale, residual, act, next_shift, bool(float_out))


# ------------------------------------------------------------------------------ fake (meta) kernels
# The kernels return contiguous tensors whatever the input's layout (they read strided or channels_last
# inputs through one contiguous copy), so every fake returns contiguous outputs too.
def _stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _like(x, dtype=None):
    return x.new_empty(x.shape, dtype=dtype or x.dtype)


def _register_fakes():
    def reg(qualname):  # ops missing from an older build keep their reference path and need no fake
        if not _registered(qualname.split("::")[1]):
            return lambda fn: fn
        return torch.library.register_fake(qualname)

    def weight_outputs(w):
        torch._check(w.dim() >= 1, lambda: "w must have at least 1 dimension")
        st = w.new_empty(w.shape[0], dtype=_stat_dtype(w.dtype))
        return _like(w), st, st.clone()

    def activation_outputs(x):
        torch._check(x.dim() >= 1, lambda: "x must have a batch dimension")
        st = x.new_empty((), dtype=_stat_dtype(x.dtype))
        return _like(x), st, st.clone(), x.new_empty(x.shape[0], dtype=_stat_dtype(x.dtype))

    @reg("erbnn::restore_weight")
    def _(w):
        return weight_outputs(w)

    @reg("erbnn::restore_weight_train")
    def _(w, p, q_values, q_count, width, min_width):
        return (*weight_outputs(w), w.new_empty((), dtype=_stat_dtype(w.dtype)))

    @reg("erbnn::_restore_weight_backward")
    def _(grad_wb, w, mean, alpha, b):
        return _like(w)

    @reg("erbnn::restore_activation")
    def _(x):
        return activation_outputs(x)

    @reg("erbnn::restore_activation_train")
    def _(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values, sigma_count, min_width):
        return (*activation_outputs(x), x.new_empty((), dtype=_stat_dtype(x.dtype)))

    @reg("erbnn::_restore_activation_backward")
    def _(grad_y, x, mean, sigma, sample_rms, b):
        return _like(x)

    @reg("erbnn::_restore_activation_backward_nhwc")
    def _(grad_y, x, mean, sigma, sample_rms, b):
        torch._check(x.dim() == 3, lambda: "x must be [N, C, H*W]")
        return _like(x)

    @reg("erbnn::restore_activation_train_nhwc")
    def _(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values, sigma_count, min_width):
        torch._check(x.dim() == 3, lambda: "x must be [N, C, H*W]")
        y, mean, sigma, rms = activation_outputs(x)
        n, c, p = x.shape
        return (x.new_empty((n, p, c)), mean, sigma, rms, x.new_empty((), dtype=_stat_dtype(x.dtype)),
                x.new_empty((n, p, (c + word_bits(x.device) - 1) // word_bits(x.device)), dtype=word_dtype(x.device)))

    @reg("erbnn::restore_activation_train_bits")
    def _(x, p, q_values, q_count, width, mean_values, mean_count, sigma_values, sigma_count, min_width):
        torch._check(x.dim() == 3, lambda: "x must be [N, C, H*W]")
        _, mean, sigma, rms = activation_outputs(x)
        n, c, p = x.shape
        return (mean, sigma, rms, x.new_empty((), dtype=_stat_dtype(x.dtype)),
                x.new_empty((n, p, (c + word_bits(x.device) - 1) // word_bits(x.device)), dtype=word_dtype(x.device)))

    @reg("erbnn::_batch_transpose")
    def _(x):
        torch._check(x.dim() == 3, lambda: "x must be 3-D [B, R, S]")
        return x.new_empty((x.shape[0], x.shape[2], x.shape[1]))

    @reg("erbnn::_unpack_restored")
    def _(bits, channels, mean, sigma, channels_first, dtype=None):
        torch._check(bits.dim() == 3, lambda: "bits must be 3-D [N, P, bytes]")
        n, p, _ = bits.shape
        return bits.new_empty((n, channels, p) if channels_first else (n, p, channels), dtype=dtype or mean.dtype)

    @reg("erbnn::restore_activation_fixed")
    def _(x, mean, sigma):
        return _like(x)

    @reg("erbnn::_restore_activation_fixed_backward")
    def _(grad_y, x, mean, sigma, b):
        return _like(x)

    @reg("erbnn::approx_sign")
    def _(x):
        return _like(x)

    @reg("erbnn::_approx_sign_backward")
    def _(grad, x, b):
        return _like(x)

    @reg("erbnn::two_sided_quantile")
    def _(x, p):
        return x.new_empty((), dtype=torch.float32)

    @reg("erbnn::pack_signs")
    def _(x, dim):
        d = dim % x.dim()
        bits = word_bits(x.device)
        shape = [s for i, s in enumerate(x.shape) if i != d] + [(x.shape[d] + bits - 1) // bits]
        return x.new_empty(shape, dtype=word_dtype(x.device))

    @reg("erbnn::unpack_signs")
    def _(packed, n, dim):
        shape = list(packed.shape[:-1])
        shape.insert(dim % (len(shape) + 1), n)
        return packed.new_empty(shape, dtype=torch.float32)

    def conv_out(x, o, kh, kw, stride, padding, dilation):
        n, _, h, wd = x.shape
        oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        return x.new_empty((n, o, oh, ow), dtype=torch.float32)

    @reg("erbnn::binary_conv2d")
    def _(x, w, stride, padding, dilation):
        torch._check(x.dim() == 4 and w.dim() == 4, lambda: "x and w must be 4-D")
        return conv_out(x, w.shape[0], w.shape[2], w.shape[3], stride, padding, dilation)

    @reg("erbnn::pack_conv_weight")
    def _(w):
        torch._check(w.dim() == 4, lambda: "w must be 4-D [O, C, kh, kw]")
        bits = word_bits(w.device)
        o, c, kh, kw = w.shape
        return w.new_empty((o, kh, kw, (c + bits - 1) // bits), dtype=word_dtype(w.device))

    @reg("erbnn::binary_conv2d_packed")
    def _(x, w_packed, stride, padding, dilation, x_shift=None, out_scale=None, out_bias=None, ones_scale=None,
          residual=None, act=None):
        torch._check(x.dim() == 4 and w_packed.dim() == 4, lambda: "x and w_packed must be 4-D")
        return conv_out(x, w_packed.shape[0], w_packed.shape[1], w_packed.shape[2], stride, padding, dilation)

    @reg("erbnn::binary_conv2d_bits")
    def _(x, w_packed, stride, padding, dilation, in_channels=-1, x_shift=None, out_scale=None, out_bias=None,
          ones_scale=None, residual=None, act=None, next_shift=None, float_out=True):
        torch._check(x.dim() == 4 and w_packed.dim() == 4, lambda: "x and w_packed must be 4-D")
        o = w_packed.shape[0]
        if in_channels >= 1:  # packed [N, H, W, Cw]: the geometry of an [N, C, H, W] input
            x = x.new_empty((x.shape[0], in_channels, x.shape[1], x.shape[2]), dtype=torch.float32)
        out = conv_out(x, o, w_packed.shape[1], w_packed.shape[2], stride, padding, dilation)
        word = w_packed.dtype
        bits_per = dtype_bits(word)
        bits = (out.new_empty((out.shape[0], out.shape[2], out.shape[3], (o + bits_per - 1) // bits_per), dtype=word)
                if next_shift is not None else out.new_empty(0, dtype=word))
        return (out if float_out else out.new_empty(0)), bits

    @reg("erbnn::binary_linear")
    def _(x, w):
        return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.float32)


if _native.available():
    _register_fakes()
