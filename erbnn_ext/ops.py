"""Thin typed layer over torch.ops.erbnn: fake (meta) kernels for torch.compile, and per-op dispatch
that falls back to the reference twin where no native kernel exists for the tensor's device (for
example CUDA tensors in a build without CUDA kernels).

Every function here has the signature of its twin in erbnn_ext.reference.
"""
import torch

from . import _native, reference

_LIB = "erbnn"


_OP_NAMES = (
    "restore_weight", "_restore_weight_backward", "restore_activation", "_restore_activation_backward",
    "restore_activation_fixed", "_restore_activation_fixed_backward", "approx_sign", "_approx_sign_backward",
    "two_sided_quantile", "pack_signs", "unpack_signs", "binary_conv2d", "binary_linear",
    "pack_conv_weight", "binary_conv2d_packed",
)


def _kernel_table():
    # Computed once at import (kernels register when the .so loads) so that the per-call lookup is a
    # plain dict access that torch.compile can trace.
    table = {}
    for name in _OP_NAMES:
        for dev, key in (("cpu", "CPU"), ("cuda", "CUDA")):
            table[(name, dev)] = _native.available() and torch._C._dispatch_has_kernel_for_dispatch_key(
                f"{_LIB}::{name}", key)
    return table


_KERNELS = _kernel_table()


def has_kernel(op_name: str, device_type: str) -> bool:
    """Whether torch.ops.erbnn.<op_name> has a compiled kernel for device_type ("cpu", "cuda")."""
    return _KERNELS.get((op_name, device_type), False)


def _op(name):
    return getattr(torch.ops.erbnn, name).default


def _dispatch(name, ref_fn, device):
    return _op(name) if has_kernel(name, device.type) else ref_fn


def _b(b, like):
    return reference.as_width(b, like)


def restore_weight(w):
    return _dispatch("restore_weight", reference.restore_weight, w.device)(w)


def restore_weight_backward(grad_wb, w, mean, alpha, b):
    fn = _dispatch("_restore_weight_backward", reference.restore_weight_backward, w.device)
    return fn(grad_wb, w, mean, alpha, _b(b, w))


def restore_activation(x):
    return _dispatch("restore_activation", reference.restore_activation, x.device)(x)


def restore_activation_backward(grad_y, x, mean, sigma, sample_rms, b):
    fn = _dispatch("_restore_activation_backward", reference.restore_activation_backward, x.device)
    return fn(grad_y, x, mean, sigma, sample_rms, _b(b, x))


def restore_activation_fixed(x, mean, sigma):
    return _dispatch("restore_activation_fixed", reference.restore_activation_fixed, x.device)(x, mean, sigma)


def restore_activation_fixed_backward(grad_y, x, mean, sigma, b):
    fn = _dispatch("_restore_activation_fixed_backward", reference.restore_activation_fixed_backward, x.device)
    return fn(grad_y, x, mean, sigma, _b(b, x))


def approx_sign(x):
    return _dispatch("approx_sign", reference.approx_sign, x.device)(x)


def approx_sign_backward(grad, x, b):
    return _dispatch("_approx_sign_backward", reference.approx_sign_backward, x.device)(grad, x, _b(b, x))


def two_sided_quantile(x, p):
    return _dispatch("two_sided_quantile", reference.two_sided_quantile, x.device)(x, float(p))


def pack_signs(x, dim=1):
    return _dispatch("pack_signs", reference.pack_signs, x.device)(x, dim)


def unpack_signs(packed, n, dim=1):
    return _dispatch("unpack_signs", reference.unpack_signs, packed.device)(packed, n, dim)


def binary_conv2d(x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    fn = _dispatch("binary_conv2d", reference.binary_conv2d, x.device)
    return fn(x, w, list(stride), list(padding), list(dilation))


def binary_linear(x, w):
    return _dispatch("binary_linear", reference.binary_linear, x.device)(x, w)


def pack_conv_weight(w):
    return _dispatch("pack_conv_weight", reference.pack_conv_weight, w.device)(w)


def binary_conv2d_packed(x, w_packed, stride=(1, 1), padding=(0, 0), dilation=(1, 1), x_shift=None,
                         out_scale=None, out_bias=None, ones_scale=None):
    fn = _dispatch("binary_conv2d_packed", reference.binary_conv2d_packed, x.device)
    if x_shift is not None and not isinstance(x_shift, torch.Tensor):  # a Python number
        x_shift = torch.tensor(float(x_shift), dtype=torch.float64, device=x.device)
    return fn(x, w_packed, list(stride), list(padding), list(dilation), x_shift, out_scale, out_bias, ones_scale)


# ------------------------------------------------------------------------------ fake (meta) kernels
def _stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_fakes():
    reg = torch.library.register_fake

    @reg("erbnn::restore_weight")
    def _(w):
        torch._check(w.dim() >= 1, lambda: "w must have at least 1 dimension")
        st = w.new_empty(w.shape[0], dtype=_stat_dtype(w.dtype))
        return torch.empty_like(w), st, st.clone()

    @reg("erbnn::_restore_weight_backward")
    def _(grad_wb, w, mean, alpha, b):
        return torch.empty_like(w)

    @reg("erbnn::restore_activation")
    def _(x):
        torch._check(x.dim() >= 1, lambda: "x must have a batch dimension")
        st = x.new_empty((), dtype=_stat_dtype(x.dtype))
        return torch.empty_like(x), st, st.clone(), x.new_empty(x.shape[0], dtype=_stat_dtype(x.dtype))

    @reg("erbnn::_restore_activation_backward")
    def _(grad_y, x, mean, sigma, sample_rms, b):
        return torch.empty_like(x)

    @reg("erbnn::restore_activation_fixed")
    def _(x, mean, sigma):
        return torch.empty_like(x)

    @reg("erbnn::_restore_activation_fixed_backward")
    def _(grad_y, x, mean, sigma, b):
        return torch.empty_like(x)

    @reg("erbnn::approx_sign")
    def _(x):
        return torch.empty_like(x)

    @reg("erbnn::_approx_sign_backward")
    def _(grad, x, b):
        return torch.empty_like(x)

    @reg("erbnn::two_sided_quantile")
    def _(x, p):
        return x.new_empty((), dtype=torch.float32)

    @reg("erbnn::pack_signs")
    def _(x, dim):
        d = dim % x.dim()
        bits = 64 if x.device.type == "cpu" else 32
        shape = [s for i, s in enumerate(x.shape) if i != d] + [(x.shape[d] + bits - 1) // bits]
        return x.new_empty(shape, dtype=torch.int64 if bits == 64 else torch.int32)

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
        bits = 64 if w.device.type == "cpu" else 32
        o, c, kh, kw = w.shape
        return w.new_empty((o, kh, kw, (c + bits - 1) // bits), dtype=torch.int64 if bits == 64 else torch.int32)

    @reg("erbnn::binary_conv2d_packed")
    def _(x, w_packed, stride, padding, dilation, x_shift=None, out_scale=None, out_bias=None, ones_scale=None):
        torch._check(x.dim() == 4 and w_packed.dim() == 4, lambda: "x and w_packed must be 4-D")
        return conv_out(x, w_packed.shape[0], w_packed.shape[1], w_packed.shape[2], stride, padding, dilation)

    @reg("erbnn::binary_linear")
    def _(x, w):
        return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.float32)


if _native.available():
    _register_fakes()
