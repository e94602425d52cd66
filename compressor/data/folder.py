"""Folders of photographs, streamed: listed at start-up, decoded and augmented in DataLoader workers.

Nothing but the file list is held in memory, so memory does not grow with the number of images.
Training views come from timm's data pipeline (`timm.data.create_transform`: RandomResizedCrop,
flips, colour jitter, RandAugment / AutoAugment, random erasing); evaluation resizes then
centre-crops by `crop_pct`. Each training view is a pure function of (seed, epoch, index): the
transform runs under Python, NumPy and torch generators seeded from those three numbers (and the
caller's generators are restored after), so the batches are the same whatever `--workers` and the
batch size, the teacher cache stays valid and resuming is bit-exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from compressor import CompressorError
from compressor.data.batches import Batches
from compressor.data.seeding import SAMPLE_SEED, VIEW_SALT, mix, sample_generators

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# The transform settings of photographs (the imagefolder options of compressor.config.Augmentation
# and DataFields take their defaults from here); interpolation and crop_pct apply where neither the
# options nor a pretrained model say (timm's defaults).
PIPELINE_DEFAULTS = {"scale": 0.08, "ratio": 4 / 3, "hflip": 0.5, "color_jitter": 0.4, "auto_augment": None,
                     "reprob": 0.0, "interpolation": "bilinear", "crop_pct": 0.875}
PIPELINE_FIELDS = tuple(PIPELINE_DEFAULTS)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # resampling of resized photographs (timm's names)


@dataclass
class FileSplit:
    """A split of image files and their labels (decoded only when a batch needs them)."""

    files: list[str]
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def channels(self) -> int:
        return 3  # decoded as RGB

    def subset(self, index: torch.Tensor) -> FileSplit:
        return FileSplit([self.files[i] for i in index.tolist()], self.labels[index])

    def first(self, n: int) -> FileSplit:
        """`n` images standing for the split (--train-size, select's --samples, export's calibration):
        a folder is listed class by class, so its first files are its first classes'; this takes a
        fixed sample (seeded by SAMPLE_SEED) spread over the whole split instead, in listing order."""
        if n >= len(self):
            return self
        pick = torch.randperm(len(self), generator=torch.Generator().manual_seed(SAMPLE_SEED))[:n]
        return self.subset(pick.sort().values)


def list_imagefolder(root: Path) -> tuple[FileSplit, FileSplit, list[str]]:
    """root/train/<class>/... and root/val/<class>/... (files at any depth) -> (train, val, classes)."""
    splits, classes = {}, None
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise CompressorError(f"imagefolder root {root} has no '{split}/' folder of class folders")
        names = sorted(d.name for d in os.scandir(folder) if d.is_dir())
        if classes is None:
            classes = names
        elif names != classes:
            raise CompressorError(f"{folder} has classes {names} but train/ has {classes}")
        files, labels = [], []
        for label, name in enumerate(names):
            for dirpath, dirnames, filenames in os.walk(folder / name):
                dirnames.sort()
                for f in sorted(filenames):
                    if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                        files.append(os.path.join(dirpath, f))
                        labels.append(label)
        if not files:
            raise CompressorError(f"{folder} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        splits[split] = FileSplit(files, torch.tensor(labels, dtype=torch.int64))
    return splits["train"], splits["val"], classes


def listing_digest(root: Path, *splits: FileSplit) -> str:
    """A digest of the splits' files (paths relative to `root`, in order) and labels: part of a folder's
    data identity, so a teacher cache or a skipped recipe stage is not reused once files change."""
    import hashlib

    cut = len(os.path.join(str(root), ""))  # every listed path starts with the root (slicing is much cheaper than os.path.relpath)
    h = hashlib.sha256()
    for split in splits:
        h.update("".join(f"{f[cut:]}\t{y}\n" for f, y in zip(split.files, split.labels.tolist())).encode())
        h.update(b"--\n")
    return h.hexdigest()[:16]


def default_workers() -> int:
    """DataLoader workers per process: the CPU cores this process may use, shared among the
    processes torchrun started on this machine, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cores // max(local, 1)))


def pipeline_settings(values: dict) -> dict:
    """The transform settings recorded in a folder bundle's data identity, from option values
    (PIPELINE_FIELDS; unset ones take PIPELINE_DEFAULTS): RandomResizedCrop's scale and ratio as
    timm's (min, max) ranges."""
    unknown = set(values) - set(PIPELINE_FIELDS)
    if unknown:
        raise CompressorError(f"unknown pipeline setting(s) {sorted(unknown)}")
    settings = PIPELINE_DEFAULTS | {k: v for k, v in values.items() if v is not None}
    settings["scale"] = [settings["scale"], 1.0]
    settings["ratio"] = [1 / settings["ratio"], settings["ratio"]]
    return settings


def configure_stream(bundle, pipeline: dict, workers: int | None) -> None:
    """Fill in a folder bundle's normalization, transform settings and worker count."""
    settings = pipeline_settings(pipeline)
    bundle.mean, bundle.std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    bundle.pipeline = settings
    bundle.workers = default_workers() if workers is None else workers
    bundle.identity["pipeline"] = settings


def transform(bundle, train: bool, normalize: bool = True):
    """timm's training or evaluation transform for this bundle (its size, normalization, settings)."""
    from timm.data import create_transform

    p = bundle.pipeline
    common = dict(interpolation=p["interpolation"], mean=tuple(bundle.mean), std=tuple(bundle.std),
                  normalize=normalize)
    if not train:
        return create_transform(bundle.image_size, is_training=False, crop_pct=p["crop_pct"], **common)
    try:
        return create_transform(bundle.image_size, is_training=True, scale=tuple(p["scale"]),
                                ratio=tuple(p["ratio"]), hflip=p["hflip"], color_jitter=p["color_jitter"],
                                auto_augment=p["auto_augment"], re_prob=p["reprob"], **common)
    except (AssertionError, ValueError, KeyError) as e:
        raise CompressorError(f"--auto-augment '{p['auto_augment']}' is not a timm augmentation policy "
                              f"(e.g. rand-m9-mstd0.5, augmix-m5-w3, original): {e}") from None


def read_rgb(path: str):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise CompressorError(f"cannot read image {path} ({type(e).__name__}: not an image PIL can decode); "
                              "remove or fix it") from None


class FolderDataset(Dataset):
    """dataset[(index, epoch)] -> (image tensor, label, index); a training view is a pure
    function of (seed, epoch, index)."""

    def __init__(self, split: FileSplit, transform, *, augment: bool, seed: int) -> None:
        self.files, self.labels = split.files, split.labels.tolist()
        self.transform, self.augment, self.seed = transform, augment, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key):
        index, epoch = key
        image = read_rgb(self.files[index])
        if self.augment:
            with sample_generators(mix(self.seed, epoch, index, VIEW_SALT)):
                x = self.transform(image)
        else:
            x = self.transform(image)
        return x, self.labels[index], index


class _Keys(Sampler):
    """The batch sampler: (index, epoch) keys of each of this process's batches."""

    def __init__(self, batches: Batches) -> None:
        self.batches = batches

    def __iter__(self):
        epoch = self.batches.epoch
        for index in self.batches.batch_indices():
            yield [(i, epoch) for i in index.tolist()]

    def __len__(self) -> int:
        return len(self.batches) - self.batches.skip_batches


class StreamLoader(Batches):
    """Batches of a FileSplit decoded in `bundle.workers` DataLoader worker processes, pinned when a
    GPU is present and prefetched; the same interface and sample order as the in-memory
    `compressor.data.BatchLoader`."""

    def __init__(self, data: FileSplit, batch_size: int, *, bundle, train: bool, seed: int, rank: int = 0,
                 world: int = 1) -> None:
        super().__init__(len(data), batch_size, shuffle=train, seed=seed, rank=rank, world=world)
        self.dataset = FolderDataset(data, transform(bundle, train), augment=train, seed=seed)
        self.workers = bundle.workers
        self._loader: DataLoader | None = None

    def _dataloader(self) -> DataLoader:
        if self._loader is None:
            self._loader = DataLoader(
                self.dataset, batch_sampler=_Keys(self), num_workers=self.workers,
                pin_memory=torch.cuda.is_available(),
                # workers start afresh each epoch (a fork: milliseconds); kept alive they made every
                # exit wait 5 s per worker for its join timeout
                persistent_workers=False,
                prefetch_factor=2 if self.workers > 0 else None,
                generator=torch.Generator())  # workers' seeds never draw from the global generator
        return self._loader

    def __iter__(self):
        try:
            for x, y, index in self._dataloader():
                self.last_index = index
                yield x, y
        except CompressorError as e:  # raised in a worker: keep its last line, not the traceback
            raise CompressorError(str(e).strip().splitlines()[-1].removeprefix("compressor.CompressorError: ")) from None


def view_images(bundle, files: list[str]) -> list[torch.Tensor]:
    """uint8 (3, H, W) images as the evaluation transform crops them (for pictures in reports)."""
    t = transform(bundle, train=False, normalize=False)
    return [t(read_rgb(f)) for f in files]
