"""Training-time binarizers for ablations and baselines (method.md sections 3 and 6), in plain PyTorch.

Every layer here keeps ERBinaryConv2d's constructor signature, so a model swaps one for the other:
- ERClipConv2d: ER-BNN restoration (method.md 1-2), fixed hardtanh-clip STE gradient (1 for |x| <= 1).
- EREDEConv2d: ER-BNN restoration with IR-Net's EDE gradient (t schedule).
- IRNetConv2d: IR-Net (Libra-PB weights, plain-sign activations, EDE gradient for both).
- ReCUConv2d: ReCU (clamped standardised weights with the tau schedule, identity weight STE, per-sample
  normalised activations with the gradient max(0, 2 - |2x|)).
Layers with a schedule have set_epoch(epoch, epochs); erbnn_ext.nn.set_epoch calls it on every module.
q_buffer is accepted (same signature) but unused: none of these measures a quantile. The IR-Net and ReCU
formulas are erbnn_ext.quantizers' (shared with the benchmarks' baselines); the sign modules here give
+1 for x >= 0 and keep their schedule state (EDE's t) as buffers.
"""
import functools

import torch
import torch.nn.functional as F

from .._common import EPS, sign
from ..quantizers import IRNet, ReCU, ede_grad, recu_act_grad
from .layers import ERBinaryConv2d, check_binary_conv_config, running_stats
from .ring import RingMean


# ------------------------------------------------------------------------ sign with a chosen gradient
class _SignGrad(torch.autograd.Function):
    """Forward sign(x) (+1 for x >= 0); backward g * grad_fn(x)."""

    @staticmethod
    def forward(ctx, x, grad_fn):
        ctx.save_for_backward(x)
        ctx.grad_fn = grad_fn
        return sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.grad_fn(x).to(g.dtype), None


def _clip_grad(x):
    return (x.abs() <= 1).to(x.dtype)


def _identity_grad(x):
    return torch.ones_like(x)


class ClipSign(torch.nn.Module):
    """sign(x); backward g * 1[|x| <= 1] (the hardtanh straight-through estimator)."""

    def forward(self, x):
        return _SignGrad.apply(x, _clip_grad)


class STESign(torch.nn.Module):
    """sign(x); backward g (identity straight-through estimator, ReCU's weights)."""

    def forward(self, x):
        return _SignGrad.apply(x, _identity_grad)


class ReCUActSign(torch.nn.Module):
    """sign(x); backward g * max(0, 2 - |2x|) (ReCU's activation surrogate)."""

    def forward(self, x):
        return _SignGrad.apply(x, recu_act_grad)


class EDESign(torch.nn.Module):
    """IR-Net's Error Decay Estimator: sign(x); backward g * k * t * (1 - tanh(t x)^2), k = max(1/t, 1).

    t = 10^(log10 t_min + (log10 t_max - log10 t_min) * epoch / epochs), set by set_epoch. t_min = 1e-3
    (ResNet-20) or 1e-1 (VGG-Small; the models also use it for ResNet-18), t_max = 10 (method.md 6).
    t is a buffer (state_dict; the only state), read as a tensor in the backward: no host sync.
    """

    def __init__(self, t_min: float = 1e-3, t_max: float = 10.0):
        super().__init__()
        if not 0 < t_min <= t_max:
            raise ValueError(f"EDE needs 0 < t_min <= t_max, got t_min={t_min}, t_max={t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.register_buffer("t", torch.tensor(self.t_min))

    def schedule(self, epoch: int, epochs: int) -> float:
        return IRNet.ede(epoch, epochs, self.t_min, self.t_max)[0]

    def set_epoch(self, epoch: int, epochs: int) -> float:
        t = self.schedule(epoch, epochs)
        self.t.fill_(t)
        return t

    def forward(self, x):
        t = self.t.detach().clone()  # this step's t, whatever set_epoch does before the backward
        return _SignGrad.apply(x, functools.partial(ede_grad, t=t, k=(1.0 / t).clamp_min(1.0)))

    def extra_repr(self):
        return f"t={float(self.t):g}, t_min={self.t_min:g}, t_max={self.t_max:g}"


# ------------------------------------------------------------------------------------------ layers
class _BinaryConv2dBase(torch.nn.Conv2d):
    """nn.Conv2d (groups = 1, numeric zero padding) with ERBinaryConv2d's constructor signature."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=False, padding_mode="zeros", device=None, dtype=None, *, q_buffer=100, stat_buffer=1000):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode, device=device,
                         dtype=dtype)
        self._check_config()
        self.stat_buffer = int(stat_buffer)

    def _check_config(self):
        check_binary_conv_config(self)

    def _check_input(self, x):
        self._check_config()
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input [N, {self.in_channels}, H, W], "
                             f"got {tuple(x.shape)}")

    def _conv(self, x, w):
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)


class _ERRestoredConv2d(_BinaryConv2dBase):
    """ER-BNN restoration (method.md 1-2) written with torch autograd, the sign's gradient chosen by the
    subclass (_make_sign). Forward values equal ERBinaryConv2d's; eval uses the running statistics of
    the last `stat_buffer` training steps, as ERBinaryConv2d does (same buffer names act_mean, act_sigma)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_sign = self._make_sign()
        self.act_sign = self._make_sign()
        self.act_mean = RingMean(self.stat_buffer)
        self.act_sigma = RingMean(self.stat_buffer)

    def _make_sign(self) -> torch.nn.Module:
        raise NotImplementedError

    def restored_weight(self):
        rows = self.weight.reshape(self.out_channels, -1)
        mean = rows.mean(1, keepdim=True)
        # sqrt of a floored variance keeps the gradient finite for a constant channel (alpha = EPS).
        alpha = (rows - mean).pow(2).mean(1, keepdim=True).clamp_min(EPS * EPS).sqrt()
        return self.weight_sign((rows - mean) / alpha).view_as(self.weight)

    def restored_input(self, x):
        if not self.training:
            mean, sigma = (t.to(x.dtype) for t in running_stats(self.act_mean, self.act_sigma))
        else:
            mean = x.mean()
            rms = (x - mean).pow(2).flatten(1).mean(1).clamp_min(EPS * EPS).sqrt()
            sigma = rms.mean()
            if torch.is_grad_enabled() and x.numel():
                self.act_mean.push(mean)
                self.act_sigma.push(sigma)
        return sigma * self.act_sign((x - mean) / sigma.clamp_min(EPS)) + mean

    def forward(self, x):
        self._check_input(x)
        return self._conv(self.restored_input(x), self.restored_weight())


class ERClipConv2d(_ERRestoredConv2d):
    """ER-BNN restoration with the fixed hardtanh-clip STE (grad 1 for |x| <= 1) for weights and inputs."""

    def _make_sign(self):
        return ClipSign()


class EREDEConv2d(_ERRestoredConv2d):
    """ER-BNN restoration with IR-Net's EDE gradient (EDESign, t schedule) for weights and inputs."""

    def _make_sign(self):
        return EDESign()


class IRNetConv2d(_BinaryConv2dBase):
    """IR-Net: What = (W - mean) / std_unbiased per output channel (differentiable), s = 2^round(log2
    mean|What|) (detached), W_q = s * sign(What); input sign(x); EDE gradient for both (method.md 6)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_sign = EDESign()
        self.act_sign = EDESign()

    def forward(self, x):
        self._check_input(x)
        return self._conv(IRNet.activation(x, self.act_sign), IRNet.weight(self.weight, self.weight_sign))


class ReCUConv2d(_BinaryConv2dBase):
    """ReCU (method.md 6; the formulas: quantizers.ReCU): clamped standardised weights with an identity STE,
    inputs scaled per sample (training only) with the surrogate max(0, 2 - |2x|); tau (a buffer) follows
    ReCU's exponential schedule from 0.85 to 0.99. ReCU's learnable output scale is left out: every binary
    conv in these models is followed by BatchNorm."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("tau", torch.tensor(ReCU.tau_min))
        self.weight_sign = STESign()
        self.act_sign = ReCUActSign()

    def schedule(self, epoch: int, epochs: int) -> float:
        return ReCU.tau(epoch, epochs)

    def set_epoch(self, epoch: int, epochs: int) -> float:
        tau = self.schedule(epoch, epochs)
        self.tau.fill_(tau)
        return tau

    def forward(self, x):
        self._check_input(x)
        w_b = ReCU.weight(self.weight, self.tau, self.weight_sign)
        return self._conv(ReCU.activation(x, self.act_sign, scale=self.training), w_b)


#: method name (the models' `method=`) -> binary conv class
BINARY_CONVS = {
    "erbnn": ERBinaryConv2d,
    "clip": ERClipConv2d,
    "ede": EREDEConv2d,
    "irnet": IRNetConv2d,
    "recu": ReCUConv2d,
}
