"""The embedded default data set: scikit-learn's bundled 8x8 digits (load_digits, no download; the
`train` extra installs scikit-learn) made
into 3x32x32 images (bilinear upsampling, the grey level copied to 3 channels) with a fixed split."""
import torch
import torch.nn.functional as F

from .dataset import ImageSet

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the split never changes with the training seed


def load_digits():
    """(train, test) ImageSets: 1437 / 360 images of 10 classes, normalised with the train split's
    per-channel mean and std."""
    from .._extras import require

    d = require("sklearn.datasets", "the embedded digits data set (erbnn train without --data)").load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    images = (x * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(round(len(labels) * TEST_FRACTION))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    tr = images[train_idx].float() / 255
    mean = tuple(tr.mean((0, 2, 3)).tolist())
    std = tuple(tr.std((0, 2, 3)).tolist())
    return (ImageSet(images[train_idx], labels[train_idx], mean, std, "digits-train"),
            ImageSet(images[test_idx], labels[test_idx], mean, std, "digits-test"))
