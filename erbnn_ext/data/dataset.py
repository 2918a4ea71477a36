"""ImageSet: an in-memory image classification split (uint8 images + labels + normalisation)."""
from dataclasses import dataclass

import torch


class DataError(ValueError):
    """A data folder or file is missing or malformed (the message names the path)."""


@dataclass
class ImageSet:
    """images: uint8 [N, 3, H, W]; labels: int64 [N]; mean / std: per-channel normalisation in [0, 1] units."""
    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple
    std: tuple
    name: str
    num_classes: int = 10

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise DataError(f"{self.name}: images must be uint8 [N, 3, H, W], got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.images.shape[0]} images but labels of shape "
                            f"{tuple(self.labels.shape)}")

    def __len__(self):
        return self.images.shape[0]
