"""IR-Net and ReCU as quantizer objects (method.md section 6), defined once, in plain PyTorch.

The benchmarks' baselines (erbnn_ext.baselines) and the ablation layers (erbnn_ext.nn.ablations) both call
them. A quantizer holds a method's formula (standardisation, scale, clamp); the sign and its surrogate
gradient are passed in as `sign_fn`, because the two callers differ there only: the baselines use
torch.sign with the method's gradient as a bare autograd Function, the ablation layers their sign
modules (buffers such as EDE's t live in the layer's state_dict). The surrogate gradients are here too.
"""
import math

import torch

from ._common import EPS


# ------------------------------------------------------------------------- signs with a chosen gradient
class EDEFn(torch.autograd.Function):
    """apply(x, t, k) -> torch.sign(x); backward (IR-Net's Error Decay Estimator)
    dL/dx = g * k * t * (1 - tanh(t x)^2)."""

    @staticmethod
    def forward(ctx, x, t, k):
        ctx.save_for_backward(x)
        ctx.t, ctx.k = t, k
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ede_grad(x, ctx.t, ctx.k), None, None


class STEFn(torch.autograd.Function):
    """apply(x) -> torch.sign(x); backward identity (ReCU's weight estimator: the clamp before it bounds x)."""

    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class ReCUActFn(torch.autograd.Function):
    """apply(x) -> torch.sign(x); backward ReCU's activation surrogate dL/dx = g * max(0, 2 - |2x|)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * recu_act_grad(x)


def ede_grad(x, t, k):
    """d/dx of k * tanh(t x): EDE's surrogate."""
    return k * t * (1 - torch.tanh(x * t) ** 2)


def recu_act_grad(x):
    """ReCU's activation surrogate max(0, 2 - |2x|)."""
    return (2 - (2 * x).abs()).clamp_min(0)


# ------------------------------------------------------------------------------------------- methods
class IRNet:
    """IR-Net (Libra-PB): What = (W - mean) / std_unbiased per output channel (differentiable),
    s = 2^round(log2 mean|What|) (detached), W_q = s * sign(What); activations sign(x); EDE gradient for
    both, t = 10^(log10 t_min + (log10 t_max - log10 t_min) * e/E), k = max(1/t, 1). std and mean|What|
    are floored at EPS, so a constant channel stays finite."""

    @staticmethod
    def ede(epoch, epochs, t_min=1e-3, t_max=10.0):
        """(t, k) of the EDE schedule at `epoch` of `epochs` (clamped to [0, epochs]). t_min = 1e-3 is the
        ResNet-20 setting (1e-1 for VGG)."""
        frac = min(max(epoch, 0), epochs) / epochs
        lo, hi = math.log10(t_min), math.log10(t_max)
        t = 10.0 ** (lo + (hi - lo) * frac)
        return t, max(1.0 / t, 1.0)

    @staticmethod
    def weight(w, sign_fn=torch.sign):
        rows = w.reshape(w.shape[0], -1)
        what = rows - rows.mean(1, keepdim=True)
        what = what / what.std(1, keepdim=True).clamp_min(EPS)
        s = torch.pow(2.0, torch.round(torch.log2(what.abs().mean(1, keepdim=True).clamp_min(EPS)))).detach()
        return (sign_fn(what) * s).view_as(w)

    @staticmethod
    def activation(x, sign_fn=torch.sign):
        return sign_fn(x)


class ReCU:
    """ReCU: w0 = W - mean, w1 = w0 / (sqrt(var(w0) + 1e-5) / (2 sqrt 2)) over the layer, Q_tau = -mean|w1| *
    ln(2 - 2 tau) (detached), W_b = sign(clamp(w1, -Q_tau, Q_tau)) with an identity STE; activations
    sign(x / sqrt(var_n + 1e-5)) (unbiased variance per sample) with the surrogate max(0, 2 - |2x|).
    tau rises from tau_min = 0.85 to tau_max = 0.99: tau(e) = A e^(e/E) + B, A = (tau_max - tau_min) /
    (e - 1), B = tau_min - A."""

    tau_min, tau_max = 0.85, 0.99

    @classmethod
    def tau(cls, epoch, epochs):
        a = (cls.tau_max - cls.tau_min) / (math.e - 1)
        return a * math.exp(min(max(epoch, 0), epochs) / epochs) + cls.tau_min - a

    @staticmethod
    def weight(w, tau=0.85, sign_fn=torch.sign):
        """tau: a float or a 0-dim tensor (read on its device: no host sync)."""
        w0 = w - w.mean()
        w1 = w0 / (torch.sqrt(w0.var() + 1e-5) / (2 * math.sqrt(2)))
        tau = tau.to(w1.dtype) if isinstance(tau, torch.Tensor) else tau
        q = (-w1.abs().mean() * torch.log(torch.as_tensor(2 - 2 * tau, dtype=w.dtype, device=w.device))).detach()
        return sign_fn(torch.clamp(w1, -q, q))

    @staticmethod
    def scale_activation(x):
        """x / sqrt(var + 1e-5), the (unbiased) variance per sample over all but the batch dimension."""
        return x / torch.sqrt(x.flatten(1).var(1) + 1e-5).view(-1, *(1,) * (x.dim() - 1))

    @classmethod
    def activation(cls, x, sign_fn=torch.sign, scale=True):
        return sign_fn(cls.scale_activation(x) if scale else x)
