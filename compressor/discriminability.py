"""Channel discriminability: how well each feature map separates the classes.

Score of channel c = mean over positions (h, w) of the population standard deviation, across
classes, of the class-mean activation at (c, h, w). High score: the classes look different there.
"""

from __future__ import annotations

import torch


def channel_discriminability(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One score per channel for features (N, C, H, W) or (N, C) with integer labels (N,)."""
    acc = DiscriminabilityAccumulator(num_classes)
    acc.update(features, labels)
    return acc.scores()


class DiscriminabilityAccumulator:
    """Streaming version of `channel_discriminability`: feed batches, then read `scores()`."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sums: torch.Tensor | None = None
        self.counts = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        f = features.detach().to(torch.float64).cpu()
        if f.dim() == 2:
            f = f[:, :, None, None]
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, *f.shape[1:], dtype=torch.float64)
        self.sums.index_add_(0, labels.cpu(), f)
        self.counts += torch.bincount(labels.cpu(), minlength=self.num_classes).to(torch.float64)

    def scores(self) -> torch.Tensor:
        present = self.counts > 0
        if self.sums is None or present.sum() < 2:
            raise ValueError("channel discriminability needs samples of at least two classes")
        means = self.sums[present] / self.counts[present].view(-1, 1, 1, 1)  # (K, C, H, W)
        std = means.std(dim=0, unbiased=False)  # population std across classes: (C, H, W)
        return std.mean(dim=(1, 2)).float()
