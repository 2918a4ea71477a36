"""ImageNet-style folders (DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg) with the standard ImageNet
pipeline, without a torchvision dependency (docs/imagenet.md).

The folder scan, the image loading and the transforms follow torchvision's definitions (ImageFolder,
RandomResizedCrop, RandomHorizontalFlip, Resize, CenterCrop on PIL images, ToTensor + Normalize), so a
model trained here sees what it would see with torchvision:
- classes: the sorted sub-folder names of train/, index = position; images: files with an image extension
  found by a sorted os.walk of each class folder (links followed), decoded by Pillow and made RGB.
- train: RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3)) (10 tries, then a centre crop of
  the ratio-clamped box), horizontal flip with probability 1/2.
- val: resize the shorter side to 256 (bilinear), centre crop 224.
- normalisation: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) on [0, 1] values.
Crops and resizes run in Pillow (as torchvision does for PIL images). Random draws come from a
torch.Generator seeded by (seed, epoch, image index), so an epoch's augmentation does not depend on the
number of worker processes, and a resumed run sees the same images; with seed=None they come from the
global torch RNG in torchvision's order.
"""
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import to_float
from .loader import BatchLoader, _worker_init
from .dataset import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TRAIN_SIZE, VAL_RESIZE, VAL_SIZE = 224, 256, 224


# ----------------------------------------------------------------------------------------- transforms
def _uniform(lo, hi, g):
    return torch.empty(1).uniform_(lo, hi, generator=g).item()


def _randint(hi, g):
    return int(torch.randint(0, hi, size=(1,), generator=g).item())


class RandomResizedCrop:
    """torchvision.transforms.RandomResizedCrop(size, scale, ratio) on a PIL image (bilinear)."""

    def __init__(self, size=TRAIN_SIZE, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)

    def get_params(self, width, height, g=None):
        """(top, left, h, w) of the crop box, as torchvision's get_params draws it."""
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * _uniform(self.scale[0], self.scale[1], g)
            aspect = math.exp(_uniform(log_ratio[0].item(), log_ratio[1].item(), g))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return _randint(height - h + 1, g), _randint(width - w + 1, g), h, w
        in_ratio = width / height  # fallback: the whole image, clamped to the ratio range, centred
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img, g=None):
        from PIL import Image
        top, left, h, w = self.get_params(img.width, img.height, g)
        return img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, img, g=None):
        from PIL import Image
        if torch.rand(1, generator=g).item() < self.p:
            return img.transpose(Image.FLIP_LEFT_RIGHT)
        return img


class Resize:
    """Shorter side to `size` (the longer one int(size * long / short)), bilinear; torchvision.Resize(int)."""

    def __init__(self, size=VAL_RESIZE):
        self.size = int(size)

    def __call__(self, img, g=None):
        from PIL import Image
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        if short == self.size:
            return img
        new_short, new_long = self.size, int(self.size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        return img.resize((new_w, new_h), Image.BILINEAR)


class CenterCrop:
    """torchvision.CenterCrop(size): a size x size centre box; a smaller image is zero-padded first."""

    def __init__(self, size=VAL_SIZE):
        self.size = int(size)

    @staticmethod
    def _offset(have, want):
        if have < want:  # torchvision pads (want - have) // 2 before, the rest after
            return -((want - have) // 2)
        return int(round((have - want) / 2.0))

    def __call__(self, img, g=None):
        left, top = self._offset(img.width, self.size), self._offset(img.height, self.size)
        return img.crop((left, top, left + self.size, top + self.size))  # PIL fills outside with zeros


def to_uint8_tensor(img) -> torch.Tensor:
    """PIL RGB image -> uint8 [3, H, W] (ToTensor before its division by 255)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img, g=None):
        for t in self.transforms:
            img = t(img, g)
        return img


def train_transform(size=TRAIN_SIZE):
    return Compose([RandomResizedCrop(size), RandomHorizontalFlip()])


def val_transform(resize=VAL_RESIZE, size=VAL_SIZE):
    return Compose([Resize(resize), CenterCrop(size)])


# ------------------------------------------------------------------------------------------- dataset
def find_classes(root) -> tuple:
    """(classes, class_to_idx): the sorted sub-folder names of `root`."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    return classes, {c: i for i, c in enumerate(classes)}


def make_samples(root, class_to_idx) -> list:
    """[(path, class index)] in torchvision ImageFolder's order."""
    samples = []
    for cls in sorted(class_to_idx):
        folder = os.path.join(root, cls)
        for dirpath, _, fnames in sorted(os.walk(folder, followlinks=True)):
            for fname in sorted(fnames):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fname), class_to_idx[cls]))
    if not samples:
        raise DataError(f"{root}: no image files ({', '.join(IMG_EXTENSIONS)}) in its class folders")
    return samples


def _sample_seed(seed, epoch, index) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, np.uint64)[0] >> 1)


class ImageFolder(Dataset):
    """torchvision.datasets.ImageFolder's contents (classes, class_to_idx, samples, targets), giving
    (uint8 [3, H, W] image after `transform`, class index). Index with an int (random draws from the
    global RNG) or with (index, epoch) (draws seeded by (seed, epoch, index); see ImageFolderLoader)."""

    def __init__(self, root, transform=None, seed=0, classes=None, name=None):
        self.root = str(root)
        if not Path(self.root).is_dir():
            raise DataError(f"image folder not found: {self.root}")
        if classes is None:
            self.classes, self.class_to_idx = find_classes(self.root)
        else:
            self.classes, self.class_to_idx = list(classes), {c: i for i, c in enumerate(classes)}
        self.samples = make_samples(self.root, self.class_to_idx)
        self.targets = [t for _, t in self.samples]
        self.transform, self.seed = transform, seed
        self.mean, self.std, self.name = MEAN, STD, name or self.root
        self.num_classes = len(self.classes)

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        from PIL import Image
        path = self.samples[index][0]
        try:
            with open(path, "rb") as f:
                return Image.open(f).convert("RGB")
        except Exception as e:  # a truncated or non-image file: name it
            raise DataError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, None)
        img = self.load(index)
        if self.transform is not None:
            g = None
            if epoch is not None and self.seed is not None:
                g = torch.Generator().manual_seed(_sample_seed(self.seed, epoch, index))
            img = self.transform(img, g)
        return to_uint8_tensor(img), self.targets[index]


def is_imagefolder(path) -> bool:
    """True when `path` holds train/ and val/ folders (the layout load_imagefolder reads)."""
    p = Path(path).expanduser()
    return (p / "train").is_dir() and (p / "val").is_dir()


def load_imagefolder(path, seed=0, train_size=TRAIN_SIZE, val_resize=VAL_RESIZE, val_size=VAL_SIZE):
    """(train, val) ImageFolder datasets of DIR/train and DIR/val with the ImageNet pipeline; val uses
    train's classes (a class folder val/ lacks is fine, one train/ lacks is an error)."""
    root = Path(path).expanduser()
    if not is_imagefolder(root):
        raise DataError(f"{root}: expected 'train' and 'val' folders of class sub-folders (ImageNet layout)")
    train = ImageFolder(root / "train", train_transform(train_size), seed, name=f"imagefolder-train ({root})")
    extra = sorted(set(find_classes(root / "val")[0]) - set(train.classes))
    if extra:
        raise DataError(f"{root / 'val'}: class folders not in train/: {', '.join(extra[:5])}")
    val = ImageFolder(root / "val", val_transform(val_resize, val_size), seed, classes=train.classes,
                      name=f"imagefolder-val ({root})")
    return train, val


# -------------------------------------------------------------------------------------------- loader
class _EpochIndices(Sampler):
    """Yields (index, epoch) so that workers (persistent or not) seed each image's draws by the epoch."""

    def __init__(self, base, loader):
        self.base, self.loader = base, loader

    def __iter__(self):
        epoch = self.loader.epoch
        return ((int(i), epoch) for i in self.base)

    def __len__(self):
        return len(self.base)


class ImageFolderLoader(BatchLoader):
    """Iterate (x float32 [B, 3, H, W] normalised, y int64 [B]) batches of an ImageFolder for this rank,
    with `workers` decoding processes (BatchLoader's arguments, order and set_epoch).

    train=True: a DistributedSampler(shuffle=True, seed=seed) order (set_epoch each epoch) and the last
    incomplete batch dropped. train=False: images rank, rank + world, ... in order, nothing dropped or
    repeated (exact accuracy after an all-reduce)."""

    def __init__(self, data: ImageFolder, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int = 0):
        super().__init__(data, batch_size, train, seed, rank, world_size, workers)
        base = self.sampler if train else range(self.rank, len(data), self.world_size)
        self._loader = DataLoader(data, batch_size=self.batch_size, sampler=_EpochIndices(base, self),
                                  num_workers=self.workers, drop_last=self.train,
                                  persistent_workers=self.workers > 0,
                                  worker_init_fn=_worker_init if self.workers > 0 else None)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for images, labels in self._loader:
            yield to_float(images, self.data.mean, self.data.std), labels.long()
