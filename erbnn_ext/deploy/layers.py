"""deploy's frozen layers: an eval-mode ERBinaryConv2d / ERBinaryLinear as an inference-only module on the
packed XNOR-popcount kernels (weights packed once, a following BatchNorm and the block tail folded into the
epilogue), and the deploy-time RPReLU. The graph passes that build and wire them: deploy/passes.py."""
import torch

from .. import functional as EF, ops
from .._common import dtype_bits, pair, word_bits
from ..nn.layers import ERBinaryConv2d, ERBinaryLinear
from ..nn.rprelu import RPReLU


def _running_stats(layer, name):
    # The eval model's statistics: running means of the recorded steps, (0, 1) before any step.
    return tuple(float(s) for s in layer.running_stats())


def _bn_affine(bn):
    a = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    c = bn.bias.detach().double() - bn.running_mean.double() * a
    return a, c


def repack_words(w_packed, channels, bits):
    """Packed sign words (last axis) of `channels` channels regrouped into `bits`-bit words: the same bits,
    bit j of word k = channel k * bits + j. Both layouts are little-endian, so an int64 word is the two
    int32 words of its low and high channels: a view, no unpacking (works on any device)."""
    src = dtype_bits(w_packed.dtype)
    if src == bits:
        return w_packed
    w = w_packed.contiguous()
    if src == 64:
        return w.view(torch.int32)[..., : (channels + 31) // 32].contiguous()
    if w.shape[-1] % 2:
        w = torch.cat([w, w.new_zeros(*w.shape[:-1], 1)], dim=-1)
    return w.view(torch.int64)[..., : (channels + 63) // 64].contiguous()


class _FrozenBinary(torch.nn.Module):
    """Shared state: packed +-1 weights and the epilogue (out_scale, out_bias, ones_scale), float32.
    Moving the module to another device (.to / .cuda / .cpu) regroups the packed words for that
    device's kernels (int64 words on the CPU, int32 on CUDA)."""

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.w_packed = repack_words(self.w_packed, self.channels, word_bits(self.w_packed.device))
        return self

    def _freeze_from(self, layer, weight4d, bn, name):
        mu, sigma = _running_stats(layer, name)
        self.mu = mu
        with torch.no_grad():
            w_b = EF.restore_weight(weight4d.detach())[0]
            o = w_b.shape[0]
            scale = torch.full((o,), sigma, dtype=torch.float64)
            ones = torch.full((o,), self.mu, dtype=torch.float64)
            bias = (layer.bias.detach().double().cpu() if layer.bias is not None
                    else torch.zeros(o, dtype=torch.float64))
            if bn is not None:
                a, c = (t.cpu() for t in _bn_affine(bn))
                scale, ones, bias = scale * a, ones * a, bias * a + c
        dev = weight4d.device
        self.channels = weight4d.shape[1]
        self.register_buffer("w_packed", ops.pack_conv_weight(w_b.float()))
        # The shift as a 1-element tensor: read by the kernel on x's device (no host sync, traceable).
        self.register_buffer("x_shift", torch.tensor([mu], dtype=torch.float64, device=dev))
        self.register_buffer("out_scale", scale.float().to(dev))
        self.register_buffer("out_bias", bias.float().to(dev))
        self.register_buffer("ones_scale", ones.float().to(dev))
        self.register_buffer("act", None)  # [3, O] RPReLU (shift_in, slope, shift_out) once a tail is fused
        # Chaining: the next binary layer's mu; forward then returns (out, out_bits), out empty without float_out.
        self.register_buffer("next_shift", None)
        self.float_out = True
        self.folded_bn = bn is not None
        # The model's dtype: a chained consumer (packed-sign input, no float x) returns its output in it.
        self.out_dtype = weight4d.dtype

    def fold_affine(self, a, c):
        """Take over a per-channel affine a * z + c applied to this layer's output (a BatchNorm)."""
        with torch.no_grad():
            a, c = a.double().to(self.out_scale.device), c.double().to(self.out_scale.device)
            self.out_scale.copy_(self.out_scale.double() * a)
            self.ones_scale.copy_(self.ones_scale.double() * a)
            self.out_bias.copy_(self.out_bias.double() * a + c)
        self.folded_bn = True

    def fuse_rprelu(self, rprelu):
        """Take over a following RPReLU: the kernel's epilogue applies it (after the residual, if given)."""
        o = self.out_scale.numel()
        with torch.no_grad():
            act = torch.stack([rprelu.shift_in.reshape(-1).expand(o), rprelu.prelu.weight.reshape(-1).expand(o),
                               rprelu.shift_out.reshape(-1).expand(o)])
        self.act = act.float().to(self.out_scale.device).contiguous()

    def _conv(self, x4d, geom, residual=None, x_bits=None):
        """geom: (stride, padding, dilation) as pairs. The op is resolved here and called with positional
        arguments (ops' keyword wrappers cost as much as a small layer's conv at batch 1); the buffers are
        read from the module's buffer dict, each read through nn.Module.__getattr__ cost about as much."""
        b = self._buffers
        dev = (x_bits if x_bits is not None else x4d).device
        next_shift = b["next_shift"]
        if x_bits is not None or next_shift is not None:
            packed = x_bits is not None
            out, bits = ops.resolve("binary_conv2d_bits", dev)(
                x_bits if packed else x4d, b["w_packed"], *geom, self.channels if packed else -1,
                None if packed else b["x_shift"], b["out_scale"], b["out_bias"], b["ones_scale"], residual, b["act"],
                next_shift, self.float_out)
            want = x4d.dtype if x4d is not None else self.out_dtype  # the op returns float32
            if self.float_out and want != out.dtype:
                out = out.to(want)
            return out if next_shift is None else (out, bits)
        out = ops.resolve("binary_conv2d_packed", dev)(
            x4d, b["w_packed"], *geom, b["x_shift"], b["out_scale"], b["out_bias"], b["ones_scale"], residual, b["act"])
        return out if x4d.dtype == out.dtype else out.to(x4d.dtype)  # the op returns float32


class FrozenBinaryConv2d(_FrozenBinary):
    """Inference-only ERBinaryConv2d (+ an optional folded BatchNorm2d) on the packed XNOR kernel."""

    def __init__(self, layer: ERBinaryConv2d, bn=None, name="conv"):
        super().__init__()
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        self._geom = (pair(layer.stride), pair(layer.padding), pair(layer.dilation))
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self._freeze_from(layer, layer.weight, bn, name)

    def forward(self, x, residual=None, x_bits=None):
        """residual: the block's shortcut, added in the epilogue (freeze's tail fusion passes it). x_bits:
        the input as packed signs (a chained producer's out_bits; x may then be None). With next_shift set
        (chaining) returns (out, out_bits)."""
        return self._conv(x, self._geom, residual, x_bits)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, padding={self.padding}, "
                f"mu={self.mu:.4g}, folded_bn={self.folded_bn}, fused_rprelu={self.act is not None}, "
                f"emits_bits={self.next_shift is not None}, float_out={self.float_out}")


class FrozenBinaryLinear(_FrozenBinary):
    """Inference-only ERBinaryLinear (+ an optional folded BatchNorm1d), as a 1x1 packed conv."""

    def __init__(self, layer: ERBinaryLinear, bn=None, name="linear"):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._freeze_from(layer, layer.weight[:, :, None, None], bn, name)

    def forward(self, x):
        lead = x.shape[:-1]
        out = self._conv(x.reshape(-1, self.in_features, 1, 1), ((1, 1), (0, 0), (1, 1)))
        return out.reshape(*lead, self.out_features)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, mu={self.mu:.4g}, folded_bn={self.folded_bn}"


class _DeployRPReLU(RPReLU):
    """An RPReLU left outside the kernels (a float stem's) in a frozen model: torch's one-pass prelu, the
    same bits as RPReLU's training form relu(z) - slope * relu(-z) (which keeps a cheaper backward)."""

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.shift_in.numel():
            return super().forward(x)  # its error message
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.nn.functional.prelu(x + self.shift_in.view(shape), self.prelu.weight) + self.shift_out.view(shape)
