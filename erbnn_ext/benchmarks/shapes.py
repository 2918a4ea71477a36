"""The binary 3x3 conv layers of the paper's CIFAR-10 models and of the ImageNet ResNet-18 at 224x224
(method.md section 4), as benchmark shapes."""
import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class ConvShape:
    name: str       # e.g. "layer2.0.conv1"
    cin: int
    cout: int
    hw: int         # input height = width
    stride: int = 1
    k: int = 3
    padding: int = 1
    count: int = 1  # how many layers of the model have this shape

    @property
    def out_hw(self):
        return (self.hw + 2 * self.padding - self.k) // self.stride + 1

    def macs(self, batch=1):
        """Multiply-accumulates of one forward at this batch size."""
        return batch * self.cout * self.out_hw ** 2 * self.cin * self.k * self.k

    def weight_shape(self):
        return (self.cout, self.cin, self.k, self.k)

    def input_shape(self, batch):
        return (batch, self.cin, self.hw, self.hw)


def _resnet(widths, blocks, first_hw=32):
    shapes, cin, hw = [], widths[0], first_hw
    for stage, (width, n) in enumerate(zip(widths, blocks), start=1):
        stride = 1 if stage == 1 else 2
        shapes.append(ConvShape(f"layer{stage}.0.conv1", cin, width, hw, stride))
        hw = hw // stride
        # the rest of the stage: 2*n - 1 convs width->width at the new size
        shapes.append(ConvShape(f"layer{stage}.x.conv", width, width, hw, 1, count=2 * n - 1))
        cin = width
    return shapes


RESNET18 = _resnet([64, 128, 256, 512], [2, 2, 2, 2])
RESNET20 = _resnet([16, 32, 64], [3, 3, 3])
VGG_SMALL = [
    ConvShape("conv1", 128, 128, 32), ConvShape("conv2", 128, 256, 16), ConvShape("conv3", 256, 256, 16),
    ConvShape("conv4", 256, 512, 8), ConvShape("conv5", 512, 512, 8),
]
# ImageNet ResNet-18: the 7x7/2 stem and 3x3/2 max-pool bring 224x224 to 56x56 before layer1
RESNET18_IMAGENET = _resnet([64, 128, 256, 512], [2, 2, 2, 2], first_hw=56)
MODELS = {"resnet18": RESNET18, "resnet20": RESNET20, "vgg_small": VGG_SMALL, "resnet18_imagenet": RESNET18_IMAGENET}


def parse_models(text):
    """Comma-separated benchmark model names (an argparse type); the model names of `erbnn train`
    (resnet20_1w1a, ...) too."""
    names = [n.strip().lower().replace("-", "_").replace("_1w1a", "") for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in MODELS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {', '.join(bad) or repr(text)}; choose from {', '.join(MODELS)}")
    return list(dict.fromkeys(names))
