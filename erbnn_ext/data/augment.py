"""Batch augmentation and normalisation in plain torch (method.md section 5), deterministic given a
torch.Generator: RandomCrop(32, padding=4, edge padding) + horizontal flip with probability 1/2."""
import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 normalised ((x / 255 - mean) / std)."""
    x = images.float().div_(255)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Per image: pad by `padding` replicating the edge, crop a random HxW window, flip left-right with
    probability 1/2. x: [N, C, H, W] float; the offsets and flips come from `generator` (CPU)."""
    n, c, h, w = x.shape
    if n == 0:
        return x
    padded = F.pad(x, (padding,) * 4, mode="replicate")
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]              # [N, 1, H, 1]
    cols = ox[:, None] + torch.arange(w)                                   # [N, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # [N, 1, 1, W]
    idx_n = torch.arange(n)[:, None, None, None]
    idx_c = torch.arange(c)[None, :, None, None]
    dev = x.device
    return padded[idx_n.to(dev), idx_c.to(dev), rows.to(dev), cols.to(dev)]
