"""Earlier restoration methods, forward only in plain PyTorch, for comparisons (method.md section 6)."""
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
