"""ImageNet-style folders (erbnn_ext.data.imagefolder) on a tiny generated image tree."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from erbnn_ext.data import DataError, ImageFolder, ImageFolderLoader, is_imagefolder, load_imagefolder
from erbnn_ext.data.imagefolder import MEAN, STD, CenterCrop, RandomResizedCrop, Resize, to_uint8_tensor

CLASSES = ["cat", "dog", "eel"]


def _write(path, rng, size=(40, 30)):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def tree(tmp_path):
    """DIR/train/<3 classes>/4 PNGs of 40x30 (one in a sub-folder), DIR/val/<3 classes>/2 PNGs, a stray
    text file that is not an image."""
    rng = np.random.default_rng(0)
    for c in CLASSES:
        for i in range(4):
            _write(tmp_path / "train" / c / (f"sub/{i}.png" if i == 3 else f"{i}.png"), rng)
        for i in range(2):
            _write(tmp_path / "val" / c / f"v{i}.png", rng)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path


def test_scan_matches_imagefolder_order(tree):
    assert is_imagefolder(tree) and not is_imagefolder(tree / "train")
    train, val = load_imagefolder(tree)
    assert train.classes == CLASSES and train.class_to_idx == {"cat": 0, "dog": 1, "eel": 2}
    assert [(p[len(str(tree)) + 1:], t) for p, t in train.samples[:4]] == [
        ("train/cat/0.png", 0), ("train/cat/1.png", 0), ("train/cat/2.png", 0), ("train/cat/sub/3.png", 0)]
    assert len(train) == 12 and train.targets == [0] * 4 + [1] * 4 + [2] * 4
    assert len(val) == 6 and val.classes == CLASSES and train.num_classes == 3
    x, y = train[5]
    assert x.shape == (3, 224, 224) and x.dtype == torch.uint8 and y == 1


def test_val_pipeline_geometry(tree):
    """Resize(256) then CenterCrop(224) of a 40x30 image: the shorter side (30) becomes 256, the longer
    int(256 * 40 / 30) = 341; the centre crop starts at column round((341 - 224) / 2) = 58 (banker's
    rounding of 58.5), row 16. Checked against torch's antialiased bilinear resize (Pillow's filter,
    up to rounding)."""
    _, val = load_imagefolder(tree)
    img = val.load(0)
    resized = Resize(256)(img)
    assert resized.size == (341, 256)
    got, _ = val[0]
    src = to_uint8_tensor(img).float()[None]
    ref = F.interpolate(src, size=(256, 341), mode="bilinear", antialias=True, align_corners=False)[0]
    ref = ref[:, 16:240, 58:282]
    assert (got.float() - ref).abs().max() <= 2
    assert Resize(30)(img) is img  # already the right size: untouched, as torchvision


def test_center_crop_pads_small_images():
    from PIL import Image
    img = Image.fromarray(np.full((5, 3, 3), 200, np.uint8))  # 3 wide, 5 high
    out = to_uint8_tensor(CenterCrop(6)(img))
    # torchvision pads (6-3)//2 = 1 column before, 2 after; (6-5)//2 = 0 rows before, 1 after
    assert out.shape == (3, 6, 6)
    assert out[0, :5, 1:4].eq(200).all() and out[0, :, 0].eq(0).all() and out[0, :, 4:].eq(0).all()
    assert out[0, 5].eq(0).all()


def test_random_resized_crop_params():
    rrc = RandomResizedCrop(224)
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        top, left, h, w = rrc.get_params(40, 30, g)
        assert 0 <= top <= 30 - h and 0 <= left <= 40 - w and h > 0 and w > 0
        assert 0.08 * 1200 * 0.9 <= h * w <= 1200 and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    # reproducible from the generator
    assert rrc.get_params(40, 30, torch.Generator().manual_seed(1)) == rrc.get_params(40, 30, torch.Generator().manual_seed(1))
    # no box of the allowed area and ratio fits a 1000x10 strip: the centre fallback, ratio clamped to 4/3
    assert rrc.get_params(1000, 10, g) == (0, (1000 - 13) // 2, 10, 13)
    assert rrc.get_params(10, 1000, g) == ((1000 - 13) // 2, 0, 13, 10)  # round(10 / (3/4)) = 13
    # the global RNG is used without a generator (torchvision's behaviour)
    torch.manual_seed(5)
    a = rrc.get_params(40, 30)
    torch.manual_seed(5)
    assert rrc.get_params(40, 30) == a


def test_loader_batches_normalised_and_deterministic(tree):
    train, val = load_imagefolder(tree)
    loader = ImageFolderLoader(train, batch_size=5, train=True, seed=1, workers=0)
    assert len(loader) == 2  # 12 images, the incomplete last batch dropped
    loader.set_epoch(0)
    b0 = list(loader)
    assert [x.shape for x, _ in b0] == [(5, 3, 224, 224)] * 2 and b0[0][0].dtype == torch.float32
    idx_y = torch.cat([y for _, y in b0])
    assert idx_y.dtype == torch.int64 and set(idx_y.tolist()) <= {0, 1, 2}
    with_workers = ImageFolderLoader(train, batch_size=5, train=True, seed=1, workers=2)
    with_workers.set_epoch(0)
    for (xa, ya), (xb, yb) in zip(b0, with_workers):  # same images and crops with worker processes
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], b0[0][0])  # a new order and new crops
    # normalisation: (x / 255 - mean) / std of the uint8 image
    vl = ImageFolderLoader(val, batch_size=4, train=False)
    x, y = next(iter(vl))
    raw, label = val[0]
    want = (raw.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(x[0], want)
    assert y[0].item() == label == 0


def test_loader_ranks_split_the_data(tree):
    train, val = load_imagefolder(tree)
    seen = []
    for rank in range(2):
        vl = ImageFolderLoader(val, batch_size=2, train=False, rank=rank, world_size=2)
        seen += [y for _, ys in vl for y in ys.tolist()]
    assert sorted(seen) == sorted(val.targets)  # every val image exactly once over the ranks
    orders = []
    for rank in range(2):
        tl = ImageFolderLoader(train, batch_size=3, train=True, seed=0, rank=rank, world_size=2)
        tl.set_epoch(0)
        orders.append(list(tl.sampler))
    assert not set(orders[0]) & set(orders[1]) and len(orders[0]) == len(orders[1]) == 6


def test_errors_name_the_path(tree, tmp_path):
    with pytest.raises(DataError, match="'train' and 'val'"):
        load_imagefolder(tree / "train")
    (tree / "val" / "fox").mkdir()
    with pytest.raises(DataError, match="not in train/: fox"):
        load_imagefolder(tree)
    (tree / "val" / "fox").rmdir()
    bad = tree / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    train, _ = load_imagefolder(tree)
    i = [p for p, _ in train.samples].index(str(bad))
    with pytest.raises(DataError, match="broken.png"):
        train[i]
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        ImageFolder(empty)
    with pytest.raises(DataError, match="not found"):
        ImageFolder(tmp_path / "missing")
