"""binarize_: turn a plain PyTorch model into an ER-BNN one in place (for other repositories)."""
import warnings

import torch

from .layers import ERBinaryConv2d, ERBinaryLinear


def _replacement(m):
    if isinstance(m, (ERBinaryConv2d, ERBinaryLinear)):
        return None
    if isinstance(m, torch.nn.Conv2d):
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            warnings.warn(f"binarize_: keeping {m} in float (needs groups=1 and numeric zero padding)")
            return None
        new = ERBinaryConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                             bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
    elif isinstance(m, torch.nn.Linear):
        new = ERBinaryLinear(m.in_features, m.out_features, bias=m.bias is not None,
                             device=m.weight.device, dtype=m.weight.dtype)
    else:
        return None
    with torch.no_grad():
        new.weight.copy_(m.weight)
        if m.bias is not None:
            new.bias.copy_(m.bias)
    new.train(m.training)
    return new


def binarize_(model: torch.nn.Module, skip_first: bool = True, skip_last: bool = True) -> torch.nn.Module:
    """Replace the model's nn.Conv2d / nn.Linear layers in place with ERBinaryConv2d / ERBinaryLinear
    (weights and biases copied). The first and last such layers in registration order (the stem and the
    classifier) stay in float unless skip_first / skip_last are False. Returns the model."""
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    skip = set()
    if names and skip_first:
        skip.add(names[0])
    if names and skip_last:
        skip.add(names[-1])
    for name in names:
        if name in skip:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = _replacement(getattr(parent, child))
        if new is not None:
            setattr(parent, child, new)
    return model
