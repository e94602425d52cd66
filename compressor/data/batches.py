"""In-memory splits and the batch order every loader shares.

Small tensor datasets (synthetic, Fashion-MNIST, CIFAR) are held as uint8 tensors (N, C, H, W);
`BatchLoader` pads-and-crops, flips and normalizes them on the fly, vectorized per batch.
Augmentation is a pure function of (seed, epoch, index) (`compressor.data.seeding`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from compressor import distributed
from compressor.data.seeding import CROP_SALT, ORDER_SALT, mix


@dataclass
class Split:
    """An in-memory split: uint8 images (N, C, H, W) and their labels."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

    def first(self, n: int) -> Split:
        """`n` images standing for the split: its first ones (the decoded datasets' own order mixes the
        classes; a folder's does not, see `FileSplit.first`)."""
        return self if n >= len(self) else self.subset(torch.arange(n))


def process_share() -> tuple[int, int]:
    """(this process's rank, the number of processes): under torchrun, each takes its share of a batch."""
    return distributed.rank(), distributed.world_size()


class Batches:
    """The sample order every loader shares: a permutation of (seed, epoch) when shuffling, cut in
    global batches; under torchrun each process takes every world-th sample of each global batch,
    so the samples of a step are the same whatever the number of processes. `skip_batches` starts
    the next iteration that many batches in (resuming mid-epoch)."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip_batches = 0
        self.last_index: torch.Tensor | None = None  # sample indices of the batch last yielded

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.shuffle and self.world > 1 and self.n % self.batch_size and self.n % self.batch_size < self.world:
            return self.n // self.batch_size  # training: a last batch too small to give every process a sample
        return math.ceil(self.n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return self.n

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(mix(self.seed, self.epoch, ORDER_SALT))
        return torch.randperm(self.n, generator=g)

    def batch_indices(self):
        """This process's sample indices of each remaining batch of the epoch."""
        order = self.order()
        for b in range(self.skip_batches, len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.world > 1:
                index = index[self.rank::self.world]
            if len(index):  # evaluation's last batch may leave a process nothing
                yield index


class BatchLoader(Batches):
    """In-memory batches: yields (normalized float images, labels). Call `set_epoch` before each epoch."""

    def __init__(self, data: Split, batch_size: int, *, mean, std, image_size: int, shuffle: bool,
                 augment: bool, flip: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        super().__init__(len(data), batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world)
        self.data, self.augment, self.flip = data, augment, flip
        self.image_size = image_size
        c = data.images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        h = data.images.shape[2]
        self.pad = 4 if h >= 32 else 2

    def augmentation(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop offsets (dy, dx) and flip flags for the given sample indices at this epoch.

        A pure function of (seed, epoch, index): the same sample gets the same crop in every run.
        """
        g = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, CROP_SALT])
        n = len(self.data)
        table = g.integers(0, 2 * self.pad + 1, size=(n, 2))
        flips = g.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
        idx = index.numpy()
        return (torch.from_numpy(table[idx, 0]), torch.from_numpy(table[idx, 1]),
                torch.from_numpy(flips[idx]))

    def __iter__(self):
        aug = None
        if self.augment:
            aug = self.augmentation(torch.arange(len(self.data)))
        for index in self.batch_indices():
            x = self.data.images[index].float().div_(255.0)
            if aug is not None:
                x = crop_flip(x, aug[0][index], aug[1][index], aug[2][index], self.pad)
            if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False, antialias=x.shape[-1] > self.image_size)
            x = (x - self.mean) / self.std
            self.last_index = index
            yield x, self.data.labels[index]


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int):
    """Random crop with zero padding and horizontal flip, vectorized over the batch."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = dy.view(b, 1) + torch.arange(h).view(1, h)  # (B, H)
    cols = dx.view(b, 1) + torch.arange(w).view(1, w)  # (B, W)
    cols = torch.where(flip.view(b, 1), cols.flip(1), cols)
    bi = torch.arange(b).view(b, 1, 1)
    out = xp.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
