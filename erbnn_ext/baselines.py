"""Earlier restoration methods in plain PyTorch, for comparisons (method.md section 6)."""
import math

import torch


def irnet_binarize_weight(w):
    """IR-Net (Libra-PB): What = (W - mean) / std_unbiased per output channel,
    s = 2^round(log2(mean|What|)) (detached), Q = s * sign(What)."""
    rows = w.reshape(w.shape[0], -1)
    what = (rows - rows.mean(1, keepdim=True)) / rows.std(1, keepdim=True)
    s = torch.pow(2, torch.round(torch.log2(what.abs().mean(1, keepdim=True)))).detach()
    return (s * torch.sign(what)).reshape(w.shape)


def recu_binarize_weight(w, tau=0.85):
    """ReCU: w0 = W - mean; w1 = w0 / (sqrt(var(w0) + 1e-5) / (2 sqrt 2));
    Q_tau = -mean|w1| * ln(2 - 2 tau) over the whole layer; Wb = sign(clamp(w1, -Q_tau, Q_tau))."""
    w0 = w - w.mean()
    w1 = w0 / (torch.sqrt(w0.var() + 1e-5) / (2 * 2 ** 0.5))
    q = -w1.abs().mean() * torch.log(torch.as_tensor(2 - 2 * tau, dtype=w.dtype, device=w.device))
    return torch.sign(torch.clamp(w1, -q, q))


# ------------------------------------------------------------------ activations and training-mode versions
# Only for the restoration-overhead benchmarks (erbnn_ext/benchmarks/overhead.py): small twins of the
# baselines' training-time quantizers (method.md section 6), so that forward+backward can be timed
# on the same footing as ER-BNN's autograd Functions. Signs are torch.sign, as in the baselines' code.

def ede_params(epoch=0, epochs=1, t_min=1e-3, t_max=10.0):
    """IR-Net's EDE schedule: t = 10^(log10 Tmin + (log10 Tmax - log10 Tmin) * e/E), k = max(1/t, 1).
    Tmin = 1e-3 is the ResNet-20 setting (1e-1 for VGG)."""
    lo, hi = math.log10(t_min), math.log10(t_max)
    t = 10 ** (lo + (hi - lo) * epoch / epochs)
    return t, max(1.0 / t, 1.0)


class EDESign(torch.autograd.Function):
    """Forward sign(x); backward (IR-Net's EDE) dL/dx = g * k * t * (1 - tanh(t x)^2)."""

    @staticmethod
    def forward(ctx, x, t, k):
        ctx.save_for_backward(x)
        ctx.t, ctx.k = t, k
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (ctx.k * ctx.t) * (1 - torch.tanh(x * ctx.t) ** 2), None, None


class STESign(torch.autograd.Function):
    """Forward sign(x); backward identity (ReCU's weight estimator: the clamp before it bounds x)."""

    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class ReCUActSign(torch.autograd.Function):
    """Forward sign(x); backward ReCU's activation surrogate dL/dx = g * max(0, 2 - |2x|)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (2 - (2 * x).abs()).clamp_min(0)


def irnet_binarize_activation(x):
    """IR-Net activations: plain sign(x) (no restoration)."""
    return torch.sign(x)


def irnet_binarize_weight_train(w, t, k):
    """irnet_binarize_weight with the EDE gradient; mean and std stay differentiable, s is detached."""
    rows = w.reshape(w.shape[0], -1)
    what = (rows - rows.mean(1, keepdim=True)) / rows.std(1, keepdim=True)
    s = torch.pow(2, torch.round(torch.log2(what.abs().mean(1, keepdim=True)))).detach()
    return (s * EDESign.apply(what, t, k)).reshape(w.shape)


def irnet_binarize_activation_train(x, t, k):
    """IR-Net activations in training: sign with the EDE gradient."""
    return EDESign.apply(x, t, k)


def _recu_scale_activation(x):
    # a / sqrt(var + 1e-5) per sample over all but the batch dimension (unbiased var, as torch.var)
    dims = tuple(range(1, x.dim()))
    return x / torch.sqrt(x.var(dims, keepdim=True) + 1e-5)


def recu_binarize_activation(x):
    """ReCU activations: sign(a / sqrt(var(a) + 1e-5)), the variance per sample."""
    return torch.sign(_recu_scale_activation(x))


def recu_binarize_weight_train(w, tau=0.85):
    """recu_binarize_weight with its training gradients: through the standardisation and the clamp,
    identity (STE) through the sign."""
    w0 = w - w.mean()
    w1 = w0 / (torch.sqrt(w0.var() + 1e-5) / (2 * 2 ** 0.5))
    q = (-w1.abs().mean() * torch.log(torch.as_tensor(2 - 2 * tau, dtype=w.dtype, device=w.device))).detach()
    return STESign.apply(torch.clamp(w1, -q, q))


def recu_binarize_activation_train(x):
    """ReCU activations in training: per-sample scaling (differentiable), sign with max(0, 2 - |2x|)."""
    return ReCUActSign.apply(_recu_scale_activation(x))
