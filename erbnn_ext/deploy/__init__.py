"""deploy.freeze: an inference-only copy of an ER-BNN model on the XNOR-popcount kernels.

An eval-mode ERBinaryConv2d computes conv(sigma * sign(x - mu) + mu, W_b) + bias with the running
statistics (mu, sigma); because its input takes two values this equals
    sigma * conv(sign(x - mu), W_b) + mu * conv(1, W_b) + bias        (zero padding, method.md section 2),
which ops.binary_conv2d_packed computes from weights packed once, with the per-channel affine
in its epilogue. A BatchNorm that directly follows (and is used nowhere else) folds into that epilogue:
BN(z) = a * z + c, a = gamma / sqrt(running_var + eps), c = beta - running_mean * a.
ERBinaryLinear layers become 1x1 convolutions on [N, K, 1, 1].

Chaining: where a frozen conv's output is the next binary conv's input, the producer's epilogue
writes that input's packed signs (ops.binary_conv2d_bits, next_shift = the consumer's mu) and the consumer
reads them instead of packing the floats again; where nothing else reads the floats they are not written
at all. A 2x2 max-pool in between runs on the bits (sign(max(x) - mu) = OR of the signs), after the
BatchNorm and RPReLU behind it move into the producer's epilogue where they are non-decreasing per
channel (BN scale > 0, RPReLU slope >= 0: they commute with the max exactly).
"""
import copy

import torch

from .._common import word_bits  # noqa: F401  (deploy's public name for it)
from ..models import common, resnet18, resnet18_imagenet, resnet20, vgg_small
from ..nn.layers import ERBinaryConv2d, ERBinaryLinear
from ..nn.ring import RingMean
from ..nn.rprelu import RPReLU
from .layers import FrozenBinaryConv2d, FrozenBinaryLinear, _DeployRPReLU, repack_words  # noqa: F401
from .passes import (FrozenForward, _bitpool2x2, _bn_followers, _chain, _fold_into_conv,  # noqa: F401
                     _fuse_tails, materialize)

__all__ = ["freeze", "FrozenBinaryConv2d", "FrozenBinaryLinear", "FrozenForward", "materialize", "safe_globals",
           "repack_words", "word_bits"]


def safe_globals() -> list:
    """The classes a frozen model of this package's models holds, for torch.load(weights_only=True):
        with torch.serialization.safe_globals(deploy.safe_globals()):
            model = torch.load(path, weights_only=True)
    A model of your own classes needs those added too."""
    project = [FrozenBinaryConv2d, FrozenBinaryLinear, FrozenForward, _DeployRPReLU, RPReLU, RingMean,
               ERBinaryConv2d, ERBinaryLinear, common.BasicBlock, resnet20.OptionAShortcut, resnet20.ResNet20,
               resnet18.ResNet18, resnet18_imagenet.ResNet18ImageNet, vgg_small.VGGSmall]
    nn = torch.nn
    layers = [nn.Sequential, nn.ModuleList, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity,
              nn.PReLU, nn.ReLU, nn.Hardtanh, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
              nn.Dropout]
    return project + layers


def _set(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def freeze(model: torch.nn.Module, fold_bn: bool = True, fuse_tail: bool = True,
           chain: bool = True) -> torch.nn.Module:
    """An inference-only copy of `model` with every ERBinaryConv2d / ERBinaryLinear replaced by a frozen
    layer on the XNOR-popcount kernels (weights packed once), BatchNorms that directly follow them folded
    into the kernel epilogue (and those directly after a float Conv2d into its weights). With fuse_tail, a block's tail after a frozen conv (the residual add and an
    RPReLU, e.g. act(bn(conv(x)) + shortcut(x))) runs in the same kernel's epilogue: the module calling
    the conv gets a forward generated from its rewritten torch.fx graph (same submodules and state).
    With chain, a frozen conv feeding another (directly, or through a 2x2 max-pool) hands it its packed
    signs from the epilogue (module docstring), and the whole model gets a generated forward.
    The copy is in eval mode with gradients off; its outputs equal the eval-mode model's to float
    tolerance. The layers must have recorded activation statistics (trained)."""
    frozen = copy.deepcopy(model).eval()
    pairs = _bn_followers(frozen) if fold_bn else {}
    for name, m in list(frozen.named_modules()):
        if type(m) is torch.nn.Conv2d and name in pairs:
            _fold_into_conv(m, frozen.get_submodule(pairs[name]))
            _set(frozen, pairs[name], torch.nn.Identity())
        if isinstance(m, (ERBinaryConv2d, ERBinaryLinear)):
            bn_name = pairs.get(name)
            bn = frozen.get_submodule(bn_name) if bn_name else None
            cls = FrozenBinaryConv2d if isinstance(m, ERBinaryConv2d) else FrozenBinaryLinear
            _set(frozen, name, cls(m, bn, name))
            if bn_name:
                _set(frozen, bn_name, torch.nn.Identity())
    for p in frozen.parameters():
        p.requires_grad_(False)
    if fuse_tail:
        _fuse_tails(frozen)
    if chain:
        _chain(frozen)
    for m in frozen.modules():
        if type(m) is RPReLU:
            m.__class__ = _DeployRPReLU  # same parameters and state_dict; the copy's forward only
    return frozen
