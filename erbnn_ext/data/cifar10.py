"""CIFAR-10 in the standard python format (cifar-10-batches-py): data_batch_1..5 and test_batch are
pickled dicts with b"data" (uint8 [N, 3072], channel-major 3x32x32) and b"labels" (N ints in 0..9)."""
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError, ImageSet

MEAN = (0.4914, 0.4822, 0.4465)  # method.md section 5
STD = (0.2470, 0.2435, 0.2616)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
FOLDER = "cifar-10-batches-py"


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file cannot run code."""
    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def resolve_root(path) -> Path:
    """The cifar-10-batches-py folder: `path` itself or its child of that name."""
    root = Path(path).expanduser()
    if (root / FOLDER).is_dir():
        root = root / FOLDER
    if not root.is_dir():
        raise DataError(f"CIFAR-10 folder not found: {root} (expected a '{FOLDER}' folder holding "
                        f"{', '.join(TRAIN_FILES)} and {TEST_FILE})")
    return root


def read_batch(path: Path):
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) from one batch file; DataError if malformed."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch file missing: {path}")
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as e:  # any unpickling failure is a malformed file
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{path}: malformed CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data, labels = d[b"data"], np.asarray(d[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: malformed CIFAR-10 batch: b'data' must be uint8 [N, 3072], got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer) or \
            (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: malformed CIFAR-10 batch: b'labels' must be {data.shape[0]} ints in 0..9")
    images = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
    return images, torch.from_numpy(labels.astype(np.int64))


def load_cifar10(path):
    """(train, test) ImageSets from a cifar-10-batches-py folder (or its parent)."""
    root = resolve_root(path)
    parts = [read_batch(root / f) for f in TRAIN_FILES]
    train = ImageSet(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), MEAN, STD,
                     f"cifar10-train ({root})")
    images, labels = read_batch(root / TEST_FILE)
    return train, ImageSet(images, labels, MEAN, STD, f"cifar10-test ({root})")
