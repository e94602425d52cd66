"""Every seed and generator of the package in one place: each random draw is a pure function of
(seed, epoch, index or step), salted per purpose, so runs repeat bit for bit on one machine, a
resumed run continues exactly, and a teacher's outputs for an (epoch, index) are for the same view.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import get_worker_info

SYNTHETIC_SEED = 12345  # the built-in synthetic dataset: the same images everywhere
SPLIT_SEED = 20240601  # the validation split is fixed, independent of --seed, so stages agree on it
SAMPLE_SEED = 20261201  # which images of a folder's split stand for it when only some are used (FileSplit.first)
# Salts: one per purpose, so the draws of one (seed, epoch) never coincide.
ORDER_SALT = 0  # the sample order of an epoch (Batches.order)
CROP_SALT = 7  # in-memory data's crops and flips (BatchLoader.augmentation)
VIEW_SALT = 11  # a photograph's training view (FolderDataset)
MIX_SALT = 13  # a batch's mixup / cutmix draw (training.batch_mixer)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def mix(*values: int) -> int:
    """One 48-bit seed from several integers (seed, epoch, index, salt): a hash, not a sum, so
    neighbouring inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) + 0x9E3779B9 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFF
    return h


@contextmanager
def sample_generators(seed: int):
    """Run a block under Python, NumPy and torch (CPU) generators seeded from `seed` (timm's
    transforms draw from all three). In the main process (--workers 0) the caller's generators are
    restored afterwards; a DataLoader worker's are its own, so it skips that (saving NumPy's state
    alone is costly per image)."""
    in_worker = get_worker_info() is not None
    if not in_worker:
        py, npy, th = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.random.default_generator.manual_seed(seed)  # torch.manual_seed would also queue CUDA seeding
    try:
        yield
    finally:
        if not in_worker:
            random.setstate(py)
            np.random.set_state(npy)
            torch.random.default_generator.set_state(th)

