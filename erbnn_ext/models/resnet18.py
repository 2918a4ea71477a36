"""1W1A ResNet-18, CIFAR variant (method.md section 4)."""
import torch
import torch.nn.functional as F

from ..nn import RPReLU
from .common import binary_conv_class, kaiming_init_, make_stages, set_ede_range


def _fp_shortcut(in_planes, planes, stride):
    """Full-precision 1x1 conv + BN downsampling shortcut."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                               torch.nn.BatchNorm2d(planes))


class ResNet18(torch.nn.Module):
    """FP 3x3 stem 3->64 + BN + RPReLU (no maxpool); stages [2, 2, 2, 2] of two-shortcut blocks, widths
    64/128/256/512 (binary convs, FP 1x1 conv + BN downsampling shortcuts); avgpool(4) ->
    BatchNorm1d(512) -> FP Linear."""

    def __init__(self, num_classes=10, method="erbnn"):
        super().__init__()
        conv = binary_conv_class(method)
        self.method = method
        self.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.act1 = RPReLU(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = make_stages(
            conv, 64, ((64, 1), (128, 2), (256, 2), (512, 2)), 2, _fp_shortcut)
        self.bn2 = torch.nn.BatchNorm1d(512)
        self.linear = torch.nn.Linear(512, num_classes)
        kaiming_init_(self)
        set_ede_range(self, 1e-1)  # IR-Net's CIFAR range for the wider nets (method.md 6 gives VGG's)

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.linear(self.bn2(out))


def resnet18_1w1a(num_classes: int = 10, method: str = "erbnn") -> ResNet18:
    """1W1A ResNet-18 for 32x32 inputs (11.2 M parameters); method as in resnet20_1w1a."""
    return ResNet18(num_classes, method)
