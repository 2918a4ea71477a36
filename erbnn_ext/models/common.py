"""Pieces shared by the 1W1A models (method.md section 4): the binary conv class per method, the
two-shortcut basic block, and the EDE temperature range per architecture."""
import torch

from ..nn import RPReLU
from ..nn.ablations import BINARY_CONVS, EDESign

METHODS = tuple(BINARY_CONVS)


def binary_conv_class(method: str):
    """The binary conv layer for `method`: "erbnn" (ERBinaryConv2d), "clip", "ede", "irnet", "recu"."""
    if method not in BINARY_CONVS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return BINARY_CONVS[method]


def set_ede_range(model: torch.nn.Module, t_min: float, t_max: float = 10.0) -> None:
    """Set the EDE temperature range (method.md 6: t_min 1e-3 for ResNet-20, 1e-1 for VGG) on every EDESign."""
    for m in model.modules():
        if isinstance(m, EDESign):
            m.t_min, m.t_max = float(t_min), float(t_max)
            m.set_epoch(0, 1)


class BasicBlock(torch.nn.Module):
    """Two-shortcut block: out = RPReLU(BN(bconv1(x)) + shortcut(x)); out = RPReLU(BN(bconv2(out)) + out).
    bconv1 carries the stride; `shortcut` is the identity or the model's downsampling module."""

    def __init__(self, conv, in_planes, planes, stride, shortcut):
        super().__init__()
        self.conv1 = conv(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.act1 = RPReLU(planes)
        self.conv2 = conv(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.act2 = RPReLU(planes)
        self.shortcut = shortcut if shortcut is not None else torch.nn.Identity()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(out)) + out)


def make_stages(conv, in_planes, stages, blocks, shortcut):
    """The residual stages of a ResNet: for each (planes, stride) a Sequential of `blocks` BasicBlocks,
    the first carrying the stride; shortcut(in_planes, planes, stride) builds the downsampling module
    where the shape changes. Returns the list of Sequentials."""
    out = []
    for planes, stride in stages:
        layer = []
        for i in range(blocks):
            s = stride if i == 0 else 1
            short = shortcut(in_planes, planes, s) if s != 1 or in_planes != planes else None
            layer.append(BasicBlock(conv, in_planes, planes, s, short))
            in_planes = planes
        out.append(torch.nn.Sequential(*layer))
    return out


def kaiming_init_(model: torch.nn.Module) -> torch.nn.Module:
    """kaiming_normal_ on every conv and linear weight (the ResNets' init, method.md 4)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight)
    return model
