"""What `erbnn train --data` / `erbnn eval --data` read: ImageNet-style folders (DIR with train/ and val/
class folders, streamed from disk) or the in-memory sets of load_dataset (CIFAR-10, digits)."""
from .cifar10 import load_cifar10
from .dataset import ImageSet
from .digits import load_digits
from .imagefolder import ImageFolder, ImageFolderLoader, is_imagefolder, load_imagefolder
from .loader import BatchLoader

DIGITS = "digits"


def load_dataset(path=None):
    """(train, test): the embedded digits when path is None or "digits", else CIFAR-10 from `path` (a
    cifar-10-batches-py folder or its parent). DataError names the path when it is missing or malformed."""
    if path is None or str(path) == DIGITS:
        return load_digits()
    return load_cifar10(path)


def open_data(path=None, seed=0, limit_train=None):
    """(train, test) for a --data argument: load_imagefolder(path) when path holds train/ and val/ folders,
    else load_dataset(path). limit_train keeps the first N training images (smoke runs)."""
    if path is not None and is_imagefolder(path):
        train, test = load_imagefolder(path, seed=seed)
        if limit_train:
            train.samples, train.targets = train.samples[:limit_train], train.targets[:limit_train]
    else:
        train, test = load_dataset(path)
        if limit_train:
            train.images, train.labels = train.images[:limit_train], train.labels[:limit_train]
    return train, test


def make_loader(data, batch_size, train, seed=0, rank=0, world_size=1, workers=0):
    """ImageFolderLoader for an ImageFolder, BatchLoader for an in-memory ImageSet (same interface)."""
    if isinstance(data, ImageFolder):
        return ImageFolderLoader(data, batch_size, train, seed, rank, world_size, workers)
    if isinstance(data, ImageSet):
        return BatchLoader(data, batch_size, train, seed, rank, world_size, workers)
    raise TypeError(f"make_loader: expected an ImageFolder or ImageSet, got {type(data).__name__}")
