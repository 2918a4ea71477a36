"""1W1A VGG-Small for CIFAR-10 (method.md section 4)."""
import math

import torch

from ..nn import RPReLU
from .common import binary_conv_class, set_ede_range


class VGGSmall(torch.nn.Module):
    """FP conv0 3->128 + BN + RPReLU; binary convs 128->128 (maxpool), 128->256, 256->256 (maxpool),
    256->512, 512->512 (maxpool), each followed by [maxpool] + BN + RPReLU; flatten 8192 ->
    BatchNorm1d(8192) -> FP Linear. Init: conv N(0, sqrt(2 / (k*k*Cout))), linear N(0, 0.01)."""

    def __init__(self, num_classes=10, method="erbnn"):
        super().__init__()
        conv = binary_conv_class(method)
        self.method = method
        self.conv0 = torch.nn.Conv2d(3, 128, 3, padding=1, bias=False)
        self.bn0 = torch.nn.BatchNorm2d(128)
        self.act0 = RPReLU(128)
        widths = [(128, 128, True), (128, 256, False), (256, 256, True), (256, 512, False), (512, 512, True)]
        for i, (cin, cout, pool) in enumerate(widths, start=1):
            setattr(self, f"conv{i}", conv(cin, cout, 3, padding=1, bias=False))
            setattr(self, f"pool{i}", torch.nn.MaxPool2d(2) if pool else torch.nn.Identity())
            setattr(self, f"bn{i}", torch.nn.BatchNorm2d(cout))
            setattr(self, f"act{i}", RPReLU(cout))
        self.bn_fc = torch.nn.BatchNorm1d(512 * 4 * 4)
        self.fc = torch.nn.Linear(512 * 4 * 4, num_classes)
        self._init()
        set_ede_range(self, 1e-1)

    def _init(self):
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                torch.nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, 0.0, 0.01)
                torch.nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.act0(self.bn0(self.conv0(x)))
        for i in range(1, 6):
            out = getattr(self, f"conv{i}")(out)
            out = getattr(self, f"act{i}")(getattr(self, f"bn{i}")(getattr(self, f"pool{i}")(out)))
        return self.fc(self.bn_fc(out.flatten(1)))


def vgg_small_1w1a(num_classes: int = 10, method: str = "erbnn") -> VGGSmall:
    """1W1A VGG-Small (4.66 M parameters); method as in resnet20_1w1a."""
    return VGGSmall(num_classes, method)
