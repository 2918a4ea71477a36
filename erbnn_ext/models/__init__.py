"""The paper's 1W1A models (method.md section 4: the CIFAR-10 ResNet-20 / ResNet-18 / VGG-Small and the
ImageNet ResNet-18) and loading them from training checkpoints.

Each builder takes num_classes and method ("erbnn" default; "clip", "ede", "irnet", "recu" for
ablations: see erbnn_ext.nn.ablations).
"""
import torch

from .common import METHODS, BasicBlock, binary_conv_class
from .resnet18 import ResNet18, resnet18_1w1a
from .resnet18_imagenet import ResNet18ImageNet, resnet18_1w1a_imagenet
from .resnet20 import ResNet20, resnet20_1w1a
from .vgg_small import VGGSmall, vgg_small_1w1a

MODELS = {"resnet20_1w1a": resnet20_1w1a, "resnet18_1w1a": resnet18_1w1a, "vgg_small_1w1a": vgg_small_1w1a,
          "resnet18_1w1a_imagenet": resnet18_1w1a_imagenet}
# short forms accepted wherever a model name is (command line, build_model)
ALIASES = {"resnet20": "resnet20_1w1a", "resnet18": "resnet18_1w1a", "vgg_small": "vgg_small_1w1a",
           "resnet18_imagenet": "resnet18_1w1a_imagenet"}
# the input each model is built for (C, H, W): erbnn summary's default
INPUT_SIZES = {"resnet20_1w1a": (3, 32, 32), "resnet18_1w1a": (3, 32, 32), "vgg_small_1w1a": (3, 32, 32),
               "resnet18_1w1a_imagenet": (3, 224, 224)}


def model_name(name: str) -> str:
    """The MODELS key for a function name or a short form ("resnet20", "resnet18_imagenet", "vgg-small")."""
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)} or a short form {sorted(ALIASES)}, got {name!r}")
    return key


def build_model(arch: str, num_classes: int = None, method: str = "erbnn") -> torch.nn.Module:
    """Build a model by name (a key of MODELS or a short form of ALIASES); num_classes None: the model's
    own default (10 for the CIFAR models, 1000 for the ImageNet one)."""
    fn = MODELS[model_name(arch)]
    return fn(method=method) if num_classes is None else fn(num_classes=num_classes, method=method)


def load_checkpoint(path, map_location="cpu") -> torch.nn.Module:
    """Rebuild the model saved by `erbnn train` (its arch, method and num_classes are in the checkpoint)
    and load its weights and buffers. The checkpoint is a plain dict: ckpt["model"] is a state_dict that
    also loads into e.g. resnet20_1w1a().load_state_dict(...)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise ValueError(f"{path}: not an erbnn checkpoint (expected a dict with 'arch' and 'model')")
    model = build_model(ckpt["arch"], ckpt.get("num_classes", 10), ckpt.get("method", "erbnn"))
    model.load_state_dict(ckpt["model"])
    return model.eval()


__all__ = ["resnet20_1w1a", "resnet18_1w1a", "vgg_small_1w1a", "resnet18_1w1a_imagenet", "ResNet20", "ResNet18",
           "VGGSmall", "ResNet18ImageNet", "BasicBlock", "MODELS", "ALIASES", "INPUT_SIZES", "model_name", "METHODS", "build_model", "binary_conv_class", "load_checkpoint"]
