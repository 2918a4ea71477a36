"""Batches for training and evaluation: order and augmentation are pure functions of (seed, epoch,
rank, batch index), so a run is reproducible with any number of workers and resumes exactly from the
epoch counter alone (the checkpoint's data-order state is {seed, epoch, world_size})."""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .augment import random_crop_flip, to_float
from .dataset import ImageSet


def _batch_seed(*keys) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _Batches(Dataset):
    """Map-style view of one epoch's batches, so DataLoader workers can build them in parallel."""

    def __init__(self, loader, batches, epoch):
        self.loader, self.batches, self.epoch = loader, batches, epoch

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.loader.make_batch(self.batches[i], self.epoch, i)


def _worker_init(_):
    torch.set_num_threads(1)


class BatchLoader:
    """Iterate (x float32 [B, 3, H, W], y int64 [B]) batches of `data` for this rank.

    train=True: a DistributedSampler(shuffle=True, seed=seed) order (set_epoch each epoch), random crop +
    flip per batch from a generator seeded by (seed, epoch, rank, batch), and a last batch of a single
    image dropped (BatchNorm cannot train on it). train=False: images rank, rank + world, ... in order,
    no augmentation, nothing dropped or repeated (exact accuracy after an all-reduce).
    """

    def __init__(self, data: ImageSet, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.train = data, int(batch_size), bool(train)
        self.seed, self.rank, self.world_size, self.workers = int(seed), int(rank), int(world_size), int(workers)
        self.epoch = 0
        self.sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed) if train else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)

    def _batches(self):
        if self.train:
            idx = torch.as_tensor(list(iter(self.sampler)), dtype=torch.int64)
        else:
            idx = torch.arange(self.rank, len(self.data), self.world_size)
        batches = list(torch.split(idx, self.batch_size))
        if self.train and batches and len(batches[-1]) < 2:
            batches.pop()
        return batches

    def __len__(self):
        return len(self._batches())

    def make_batch(self, idx: torch.Tensor, epoch: int, i: int):
        x = to_float(self.data.images[idx], self.data.mean, self.data.std)
        if self.train:
            g = torch.Generator().manual_seed(_batch_seed(self.seed, epoch, self.rank, i))
            x = random_crop_flip(x, g)
        return x, self.data.labels[idx]

    def __iter__(self):
        batches = _Batches(self, self._batches(), self.epoch)
        if self.workers <= 0:
            return (batches[i] for i in range(len(batches)))
        return iter(DataLoader(batches, batch_size=None, shuffle=False, num_workers=self.workers,
                               worker_init_fn=_worker_init))
