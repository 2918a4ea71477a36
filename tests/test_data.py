import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from erbnn_ext.data import BatchLoader, DataError, load_cifar10, load_dataset, random_crop_flip, to_float
from erbnn_ext.data.cifar10 import TEST_FILE, TRAIN_FILES


def _write_batch(path, data, labels):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"a"] * len(labels)}, f)


@pytest.fixture
def tiny_cifar(tmp_path):
    """cifar-10-batches-py in the real format: 5 train batches of 4 images and a test batch of 3."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name, n in [(f, 4) for f in TRAIN_FILES] + [(TEST_FILE, 3)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        _write_batch(root / name, data, labels)
        batches[name] = (data, labels)
    return root, batches


def test_cifar_reader_real_format(tiny_cifar):
    root, batches = tiny_cifar
    for path in (root, root.parent):  # the folder itself or its parent
        train, test = load_cifar10(path)
        assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
        assert test.images.shape == (3, 3, 32, 32)
        data, labels = batches["data_batch_2"]
        # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
        assert torch.equal(train.images[4], torch.from_numpy(data[0].reshape(3, 32, 32)))
        assert train.images[4, 1, 0, 5].item() == data[0][1024 + 5]
        assert train.labels[4:8].tolist() == labels
        assert test.labels.tolist() == batches[TEST_FILE][1]
        assert train.mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_missing_folder_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        load_dataset(missing)


def test_missing_batch_file_names_it(tiny_cifar):
    root, _ = tiny_cifar
    os.remove(root / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(root)


@pytest.mark.parametrize("bad", ["wrong_width", "wrong_dtype", "labels", "not_a_dict", "garbage"])
def test_malformed_batch(tiny_cifar, bad):
    root, _ = tiny_cifar
    path = root / "test_batch"
    if bad == "wrong_width":
        _write_batch(path, np.zeros((3, 100), np.uint8), [0, 1, 2])
    elif bad == "wrong_dtype":
        _write_batch(path, np.zeros((3, 3072), np.float32), [0, 1, 2])
    elif bad == "labels":
        _write_batch(path, np.zeros((3, 3072), np.uint8), [0, 1, 12])
    elif bad == "not_a_dict":
        with open(path, "wb") as f:
            pickle.dump([1, 2, 3], f)
    else:
        path.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(root)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_reader_refuses_code_in_pickles(tiny_cifar):
    root, _ = tiny_cifar
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="refusing"):
        load_cifar10(root)


def test_digits_default():
    train, test = load_dataset()
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grey copied to 3 channels
    assert sorted(test.labels.unique().tolist()) == list(range(10))
    train2, test2 = load_dataset("digits")
    assert torch.equal(test.images, test2.images) and torch.equal(train.labels, train2.labels)  # fixed split
    x = to_float(train.images, train.mean, train.std)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2


def test_crop_flip_is_a_crop_of_the_edge_padded_image():
    x = torch.randn(16, 3, 8, 8)
    out = random_crop_flip(x, torch.Generator().manual_seed(1), padding=2)
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(16):
        crops = [padded[i, :, a:a + 8, b:b + 8] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    flips = [torch.equal(o, x[i].flip(2)) for i, o in enumerate(random_crop_flip(x, torch.Generator().manual_seed(2), 0))]
    assert 0 < sum(flips) < 16  # padding 0: only flips, about half of them


def test_augmentation_deterministic_given_seed():
    x = torch.randn(32, 3, 32, 32)
    a = random_crop_flip(x, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _collect(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_order_is_a_function_of_seed_and_epoch():
    train, _ = load_dataset()
    loader = BatchLoader(train, 100, train=True, seed=3)
    loader.set_epoch(1)
    a = _collect(loader)
    loader2 = BatchLoader(train, 100, train=True, seed=3, workers=2)
    loader2.set_epoch(1)
    b = _collect(loader2)
    assert len(a) == len(b) == 15
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    loader.set_epoch(2)
    assert not torch.equal(_collect(loader)[0][1], a[0][1])


def test_loader_shards_over_ranks():
    _, test = load_dataset()
    seen = torch.cat([y for r in range(2) for _, y in BatchLoader(test, 64, False, rank=r, world_size=2)])
    assert torch.equal(seen.sort().values, test.labels.sort().values)  # every test image exactly once
    train, _ = load_dataset()
    per_rank = [sum(len(y) for _, y in BatchLoader(train, 64, True, rank=r, world_size=2)) for r in range(2)]
    assert per_rank == [719, 719]
