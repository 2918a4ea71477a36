"""1W1A ResNet-18 for ImageNet in the IR-Net / Bi-Real form (method.md section 4; docs/imagenet.md)."""
import torch
import torch.nn.functional as F

from ..nn import RPReLU
from .common import binary_conv_class, kaiming_init_, make_stages, set_ede_range


def _avgpool_shortcut(in_planes, planes):
    """Stride-2 downsampling shortcut: AvgPool2d(2) then a full-precision 1x1 conv + BN (Bi-Real Net's
    form). ceil_mode with count_include_pad=False keeps the size equal to the stride-2 3x3 conv's output
    when a stage input has odd size (e.g. 7x7 at a 112x112 input); at 224x224 every size is even and it
    is a plain 2x2 average."""
    return torch.nn.Sequential(torch.nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
                               torch.nn.Conv2d(in_planes, planes, 1, bias=False),
                               torch.nn.BatchNorm2d(planes))


class ResNet18ImageNet(torch.nn.Module):
    """FP 7x7/2 stem 3->64 + BN + RPReLU + 3x3/2 max-pool; stages [2, 2, 2, 2] of two-shortcut blocks,
    widths 64/128/256/512, all 16 body 3x3 convs binary; downsampling shortcuts AvgPool2d(2) + FP 1x1
    conv + BN; global average pool -> FP Linear(512, num_classes)."""

    def __init__(self, num_classes=1000, method="erbnn"):
        super().__init__()
        conv = binary_conv_class(method)
        self.method = method
        self.conv1 = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.act1 = RPReLU(64)
        self.maxpool = torch.nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = make_stages(
            conv, 64, ((64, 1), (128, 2), (256, 2), (512, 2)), 2,
            lambda in_planes, planes, _stride: _avgpool_shortcut(in_planes, planes))
        self.fc = torch.nn.Linear(512, num_classes)
        kaiming_init_(self)
        set_ede_range(self, 1e-1)  # the ResNet-18 range of the CIFAR model (IR-Net's ImageNet choice too)

    def forward(self, x):
        out = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet18_1w1a_imagenet(num_classes: int = 1000, method: str = "erbnn") -> ResNet18ImageNet:
    """1W1A ResNet-18 for 224x224 ImageNet inputs (11.7 M parameters); method as in resnet20_1w1a."""
    return ResNet18ImageNet(num_classes, method)
