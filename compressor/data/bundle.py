"""A dataset's splits and what a model needs to know about its input."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compressor import CompressorError
from compressor.data.batches import BatchLoader, Split, process_share
from compressor.data.folder import StreamLoader, view_images


@dataclass
class DataBundle:
    """Train/val/test splits of one dataset plus what a model needs to know about its input.

    Splits are in memory (`Split`: small tensor datasets, batched by `BatchLoader`) or lists of
    image files (`compressor.data.folder.FileSplit`: decoded and augmented lazily in DataLoader worker
    processes by `compressor.data.folder.StreamLoader`). Both loaders have the same interface.
    """

    name: str
    root: str | None
    num_classes: int
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    mean: list[float]
    std: list[float]
    image_size: int
    flip: bool = True
    identity: dict = field(default_factory=dict)
    pipeline: dict = field(default_factory=dict)  # folder data: timm transform settings (compressor.data.folder)
    workers: int = 0  # folder data: DataLoader worker processes

    @property
    def input_shape(self) -> list[int]:
        return [self.train.channels, self.image_size, self.image_size]

    @property
    def streamed(self) -> bool:
        return not isinstance(self.train, Split)

    def loader(self, split: str, batch_size: int = 128, *, train: bool = False, seed: int = 0,
               limit: int | None = None, subset: torch.Tensor | None = None, shard: bool = False):
        """A loader over `split`; `train=True` shuffles and augments (deterministically by seed).

        `subset`: only these sample indices of the split; `limit`: only N samples standing for the split (`first`);
        `shard`: under torchrun, each process takes its share of every batch (`batch_size` is the
        global batch)."""
        data = getattr(self, split)
        if subset is not None:
            data = data.subset(subset)
        if limit is not None:
            data = data.first(limit)
        rank, world = process_share() if shard else (0, 1)
        if self.streamed:
            return StreamLoader(data, batch_size, bundle=self, train=train, seed=seed, rank=rank, world=world)
        return BatchLoader(data, batch_size, mean=self.mean, std=self.std, image_size=self.image_size,
                           shuffle=train, augment=train, flip=self.flip, seed=seed, rank=rank, world=world)

    def test_images(self, index: list[int]) -> list:
        """uint8 (C, H, W) test images, as a model sees them before normalization (for pictures)."""
        if self.streamed:
            return view_images(self, [self.test.files[i] for i in index])
        return [self.test.images[i] for i in index]

    def use_normalization(self, mean: list[float], std: list[float]) -> None:
        """Normalize as an upstream model was trained (its model.json), not by this data's stats."""
        if len(mean) != len(self.mean):
            raise CompressorError(
                f"the model expects {len(mean)} input channel(s) but data '{self.name}' has {len(self.mean)}")
        self.mean, self.std = list(mean), list(std)
