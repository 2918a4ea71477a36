"""Earlier restoration methods for the benchmarks' comparisons (method.md section 6): the IR-Net and
ReCU quantizers (erbnn_ext.quantizers, shared with the ablation layers) as plain functions, forward-only
and training-mode (each method's surrogate gradient), so that forward+backward can be timed on the same
footing as ER-BNN's autograd Functions. Signs are torch.sign, as in the baselines' code."""
from .quantizers import EDEFn, IRNet, ReCU, ReCUActFn, STEFn


def ede_params(epoch=0, epochs=1, t_min=1e-3, t_max=10.0):
    """IR-Net's EDE schedule (t, k) at `epoch` of `epochs` (IRNet.ede)."""
    return IRNet.ede(epoch, epochs, t_min, t_max)


def irnet_binarize_weight(w):
    """IR-Net (Libra-PB) weights, s * sign(What) (IRNet.weight)."""
    return IRNet.weight(w)


def irnet_binarize_activation(x):
    """IR-Net activations: plain sign(x) (no restoration)."""
    return IRNet.activation(x)


def irnet_binarize_weight_train(w, t, k):
    """irnet_binarize_weight with the EDE gradient; mean and std stay differentiable, s is detached."""
    return IRNet.weight(w, lambda v: EDEFn.apply(v, t, k))


def irnet_binarize_activation_train(x, t, k):
    """IR-Net activations in training: sign with the EDE gradient."""
    return IRNet.activation(x, lambda v: EDEFn.apply(v, t, k))


def recu_binarize_weight(w, tau=0.85):
    """ReCU weights sign(clamp(w1, -Q_tau, Q_tau)) (ReCU.weight)."""
    return ReCU.weight(w, tau)


def recu_binarize_activation(x):
    """ReCU activations: sign(a / sqrt(var(a) + 1e-5)), the variance per sample."""
    return ReCU.activation(x)


def recu_binarize_weight_train(w, tau=0.85):
    """recu_binarize_weight with its training gradients: through the standardisation and the clamp,
    identity (STE) through the sign."""
    return ReCU.weight(w, tau, STEFn.apply)


def recu_binarize_activation_train(x):
    """ReCU activations in training: per-sample scaling (differentiable), sign with max(0, 2 - |2x|)."""
    return ReCU.activation(x, ReCUActFn.apply)
