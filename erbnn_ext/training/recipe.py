"""The CIFAR-10 recipe of method.md section 5: SGD, the warm-up + cosine learning-rate factor, weight decay
defaults and the per-epoch binarizer schedules (p of ER-BNN, t of EDE, tau of ReCU)."""
import math

import torch

from ..nn import set_epoch


def lr_factor(epoch: int, epochs: int, warmup: int = 17) -> float:
    """method.md section 5: (e + 1) / W for e < W, then 0.5 * (1 + cos(pi * (e - s) / (E - s))), s = W - 1
    (W = 17 gives the paper's (e - 16) / (E - 16))."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    s = max(warmup - 1, 0)
    return 0.5 * (1 + math.cos(math.pi * (epoch - s) / (epochs - s)))


def default_weight_decay(model: str) -> float:
    return 2e-4 if model == "resnet18_1w1a" else 1e-4


def make_optimizer(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float,
                   decay_binary: bool = True):
    """SGD; decay_binary=False (the ImageNet recipe) applies weight decay to the float parameters only,
    not to the latent weights of the binary layers."""
    if decay_binary:
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    from ..summary import BINARY_LAYERS
    binary = {id(m.weight) for m in model.modules() if isinstance(m, BINARY_LAYERS)}
    groups = [{"params": [p for p in model.parameters() if id(p) not in binary], "weight_decay": weight_decay},
              {"params": [p for p in model.parameters() if id(p) in binary], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def make_scheduler(optimizer, epochs: int, warmup: int):
    """LambdaLR stepped once per epoch with lr_factor(epoch, epochs, warmup)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, epochs, warmup))


def epoch_schedules(model: torch.nn.Module, epoch: int, epochs: int, percentile=(0.8, 0.0)) -> dict:
    """Set every binarizer schedule of model for `epoch` (0-based) of `epochs`; returns the values set,
    e.g. {"p": 0.8} (erbnn_ext.nn.set_epoch)."""
    p0, p1 = percentile
    return set_epoch(model, epoch, epochs, p0, p1)


def warmup_warning(epochs: int, warmup: int):
    """The warning for a run that ends inside the linear warm-up, else None."""
    if epochs < warmup:
        return (f"epochs ({epochs}) < warmup ({warmup}): the whole run stays in the linear warm-up, so the "
                f"learning rate never decays (it reaches at most {epochs / max(warmup, 1):.3g}x lr); pass a "
                f"smaller warmup for short runs")
    return None
