"""The paper's 1W1A CIFAR-10 models (method.md section 4) and loading them from training checkpoints.

Each builder takes num_classes and method ("erbnn" default; "clip", "ede", "irnet", "recu" for
ablations: see erbnn_ext.nn.ablations).
"""
import torch

from .common import METHODS, BasicBlock, binary_conv_class
from .resnet18 import ResNet18, resnet18_1w1a
from .resnet20 import ResNet20, resnet20_1w1a
from .vgg_small import VGGSmall, vgg_small_1w1a

MODELS = {"resnet20_1w1a": resnet20_1w1a, "resnet18_1w1a": resnet18_1w1a, "vgg_small_1w1a": vgg_small_1w1a}


def build_model(arch: str, num_classes: int = 10, method: str = "erbnn") -> torch.nn.Module:
    """Build a model by name (a key of MODELS)."""
    if arch not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {arch!r}")
    return MODELS[arch](num_classes=num_classes, method=method)


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


__all__ = ["resnet20_1w1a", "resnet18_1w1a", "vgg_small_1w1a", "ResNet20", "ResNet18", "VGGSmall",
           "BasicBlock", "MODELS", "METHODS", "build_model", "binary_conv_class", "load_checkpoint"]
