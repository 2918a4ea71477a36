"""binarize_: turn a plain PyTorch model into an ER-BNN one in place (for other repositories), and
load_weights: load a checkpoint of the same network trained with another binarizer or in float."""
import fnmatch
import warnings

import torch

from .layers import ERBinaryConv2d, ERBinaryLinear

_ER_LAYERS = (ERBinaryConv2d, ERBinaryLinear)


def _replacement(m):
    if isinstance(m, _ER_LAYERS):
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


def _selector(spec, what):
    """A name pattern, a list of them (fnmatch), or a predicate (name, module) -> bool."""
    if spec is None:
        return None
    if callable(spec):
        return spec
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"binarize_: {what} must be a name pattern, a list of them or a callable (name, module)")
    return lambda name, _m: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def binarize_(model: torch.nn.Module, skip_first: bool = True, skip_last: bool = True, include=None,
              exclude=None) -> torch.nn.Module:
    """Replace the model's nn.Conv2d / nn.Linear layers in place with ERBinaryConv2d / ERBinaryLinear
    (weights and biases copied). Returns the model.

    skip_first / skip_last keep the first and the last such layer in float (the stem and the classifier,
    as in the paper). "First" and "last" are in REGISTRATION order (model.named_modules()), which is the
    execution order for the usual sequential definitions; pass exclude for anything else.
    include / exclude: module names as fnmatch patterns ("layer*.conv1", ["fc", "*.downsample.0"]) or a
    predicate (name, module) -> bool. With include, only matching layers are candidates; exclude wins
    over include. E.g. IR-Net's ResNet-18 keeps its 1x1 downsample convs in float:
    ``binarize_(model, exclude=lambda name, m: m.kernel_size == (1, 1))``.
    """
    inc, exc = _selector(include, "include"), _selector(exclude, "exclude")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    skip = set()
    if layers and skip_first:
        skip.add(layers[0][0])
    if layers and skip_last:
        skip.add(layers[-1][0])
    for name, module in layers:
        if name in skip or (inc is not None and not inc(name, module)) or (exc is not None and exc(name, module)):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = _replacement(module)
        if new is not None:
            setattr(parent, child, new)
    return model


def load_weights(model: torch.nn.Module, state_dict: dict, strict: bool = True):
    """Load a state_dict of the same network trained with another binarizer (IR-Net, ReCU, plain float):
    the weights, biases and BatchNorm statistics are taken; the ER layers' own buffers (percentile, widths,
    q and statistics rings) that the checkpoint lacks keep their initial values (so eval uses running
    statistics (0, 1) until a training step records the real ones). Keys of the checkpoint that the model
    does not have (e.g. IR-Net's EDE `t`) are ignored. With strict, any OTHER missing key raises a
    KeyError listing them. Returns torch's (missing_keys, unexpected_keys) result."""
    er_own = ("weight_sign.", "act_sign.", "act_mean.", "act_sigma.")
    er_state = {f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, _ER_LAYERS)
                for k in m.state_dict() if k.startswith(er_own)}
    own = set(model.state_dict())
    result = model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    missing = [k for k in result.missing_keys if k not in er_state]
    if strict and missing:
        raise KeyError(f"load_weights: the checkpoint lacks {len(missing)} weights of this model: "
                       f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    return result

