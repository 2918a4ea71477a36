"""Data for training: CIFAR-10 (python format) or the embedded scikit-learn digits, in-memory uint8,
with deterministic batching and augmentation (method.md section 5); ImageNet-style train/ and val/
class folders streamed from disk with the standard ImageNet pipeline (imagefolder.py)."""
from .augment import random_crop_flip, to_float
from .cifar10 import load_cifar10
from .dataset import DataError, ImageSet
from .digits import load_digits
from .imagefolder import ImageFolder, ImageFolderLoader, is_imagefolder, load_imagefolder
from .loader import BatchLoader
from .select import DIGITS, load_dataset, make_loader, open_data


__all__ = ["BatchLoader", "DataError", "ImageSet", "load_dataset", "load_cifar10", "load_digits",
           "random_crop_flip", "to_float", "DIGITS", "ImageFolder", "ImageFolderLoader", "is_imagefolder",
           "load_imagefolder", "make_loader", "open_data"]
