"""Internal deploy-path binary convolution (not in api.md): weights packed once, then a fused
XNOR-popcount conv with the per-channel epilogue of an eval-mode ERBinaryConv2d (+ folded BatchNorm).

ERBinaryConv2d in eval computes  sigma * conv(sign(xhat), W_b) + mu * conv(1, W_b)  with
sign(xhat) = sign(x - mu) (sigma > 0). A following BatchNorm y = a[o] * z + c[o] folds in as
out_scale = a * sigma, out_bias = c, ones_scale = a * mu (per channel: hence a tensor, not a scalar).

Packed weight layout (pack_conv_weight): [O, kh, kw, Cw], the sign bits of w along the input channels,
bit j of word k = channel k*W + j (1 for w >= 0), tail bits 0; W = 64 (int64, Cw = ceil(C/64)) on CPU,
W = 32 (int32, Cw = ceil(C/32)) on CUDA. Pack on the device that will run the conv.
"""
from . import ops

__all__ = ["pack_conv_weight", "binary_conv2d_packed"]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def pack_conv_weight(w):
    """w [O, C, kh, kw] float -> packed sign words [O, kh, kw, Cw] (layout above). NaN -> ValueError."""
    return ops.pack_conv_weight(w)


def binary_conv2d_packed(x, w_packed, stride=1, padding=0, dilation=1, x_shift=0.0, out_scale=None,
                         out_bias=None, ones_scale=None):
    """out[n, o] = out_scale[o] * conv(sign(x - x_shift), W_b) + out_bias[o] + ones_scale[o] * conv(1, W_b).

    x: [N, C, H, W] float (any layout); w_packed: pack_conv_weight(w) for w [O, C, kh, kw];
    x_shift: float (sign(x - x_shift) is +1 where x >= x_shift); out_scale, out_bias, ones_scale: [O]
    or 1-element tensors, or None (1, 0, 0). Zero padding: out-of-frame taps contribute nothing to
    either convolution. Returns float32 [N, O, OH, OW]; with all three None it is exactly
    F.conv2d(sign(x - x_shift), W_b, ...). Inference only (no gradient).
    """
    return ops.binary_conv2d_packed(x, w_packed, _pair(stride), _pair(padding), _pair(dilation), float(x_shift),
                                    out_scale, out_bias, ones_scale)
