"""1W1A ResNet-20 for CIFAR-10 (method.md section 4)."""
import torch
import torch.nn.functional as F

from ..nn import RPReLU
from .common import binary_conv_class, kaiming_init_, make_stages, set_ede_range


class OptionAShortcut(torch.nn.Module):
    """"Option A" downsampling: stride-2 subsample, then zero-pad the channels (no parameters)."""

    def __init__(self, in_planes, planes):
        super().__init__()
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0) + self.pad)


class ResNet20(torch.nn.Module):
    """FP 3x3 stem 3->16 + BN + RPReLU; stages [3, 3, 3] of two-shortcut blocks, widths 16/32/64 (binary
    convs); global average pool -> BatchNorm1d(64) -> FP Linear."""

    def __init__(self, num_classes=10, method="erbnn"):
        super().__init__()
        conv = binary_conv_class(method)
        self.method = method
        self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.act1 = RPReLU(16)
        self.layer1, self.layer2, self.layer3 = make_stages(
            conv, 16, ((16, 1), (32, 2), (64, 2)), 3,
            lambda in_planes, planes, _stride: OptionAShortcut(in_planes, planes))
        self.bn2 = torch.nn.BatchNorm1d(64)
        self.linear = torch.nn.Linear(64, num_classes)
        kaiming_init_(self)
        set_ede_range(self, 1e-3)

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(self.bn2(out))


def resnet20_1w1a(num_classes: int = 10, method: str = "erbnn") -> ResNet20:
    """1W1A ResNet-20 (0.27 M parameters); method: "erbnn" (default), "clip", "ede", "irnet", "recu"."""
    return ResNet20(num_classes, method)
