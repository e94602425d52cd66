"""Dataset names -> splits: the decoded datasets (Fashion-MNIST, CIFAR), the synthetic one and
folders of photographs (listed here, streamed by `compressor.data.folder`)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compressor import CompressorError
from compressor.data.batches import Split
from compressor.data.bundle import DataBundle
from compressor.data.folder import configure_stream, list_imagefolder, listing_digest
from compressor.data.seeding import SPLIT_SEED, SYNTHETIC_SEED

DATA_NAMES = ("synthetic", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
IMAGEFOLDER_SIZE = 224  # imagefolder images are resized to this by default (the size timm's models are built for)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0:
        raise CompressorError(f"{path} is not an IDX file (MNIST format)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise CompressorError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _fashion_mnist(root: Path, download: bool):
    if download:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
        except Exception as e:  # noqa: BLE001 - the network is the usual cause
            raise CompressorError(f"could not download Fashion-MNIST into {root}: {e}") from None
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img, lab = _find_idx(root, f"{prefix}-images-idx3-ubyte"), _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        if img is None or lab is None:
            raise CompressorError(
                f"no Fashion-MNIST files ({prefix}-images-idx3-ubyte[.gz]) under {root}; "
                "install them with 'apt-get install dataset-fashion-mnist' or pass --download")
        splits[split] = Split(torch.from_numpy(_read_idx(img).copy()).unsqueeze(1),
                              torch.from_numpy(_read_idx(lab).astype(np.int64)))
    return splits["train"], splits["test"], FASHION_CLASSES, True


def _cifar(root: Path, download: bool, hundred: bool):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR100 if hundred else CIFAR10
    out = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
        except RuntimeError as e:
            hint = "" if download else " (pass --download to fetch it)"
            raise CompressorError(f"{cls.__name__} not found under {root}{hint}: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise CompressorError(f"could not read {cls.__name__} under {root}: {e}") from None
        out.append(Split(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                         torch.tensor(ds.targets, dtype=torch.int64)))
    return out[0], out[1], list(ds.classes), True


_DECODED: dict[tuple, tuple] = {}  # the last tensor dataset decoded in this process


def _decoded(name: str, root: Path, download: bool):
    """Read a tensor dataset's files once per process: `compress run`'s stages (and a sweep's points)
    share it instead of decoding it again each. Splits are never modified in place (only indexed)."""
    key = (name, str(root.resolve()))
    if key not in _DECODED:
        splits = (_fashion_mnist(root, download) if name == "fashion-mnist"
                  else _cifar(root, download, name == "cifar100"))
        _DECODED.clear()  # hold one dataset at a time
        _DECODED[key] = splits
    return _DECODED[key]


def synthetic_splits(num_classes: int = 10, channels: int = 3, size: int = 16, train: int = 4000,
                     test: int = 400) -> tuple[Split, Split]:
    """A deterministic, class-structured dataset: each class is a smooth random pattern and a colour
    cast, plus per-image contrast and pixel noise.

    Learnable to high accuracy in one epoch by a small CNN; small enough for fast tests.
    """
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    protos = torch.rand(num_classes, channels, 4, 4, generator=g)
    protos = F.interpolate(protos, size=(size, size), mode="bilinear", align_corners=False)
    cast = (torch.rand(num_classes, channels, 1, 1, generator=g) - 0.5) * 0.6

    def make(n: int) -> Split:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.randn(n, channels, size, size, generator=g) * 0.3
        gain = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
        x = (protos[labels] - 0.5) * gain + 0.5 + cast[labels] + noise
        return Split((x.clamp(0, 1) * 255).round().to(torch.uint8), labels.long())

    return make(train), make(test)


def load_data(name: str, root: str | os.PathLike | None = None, *, image_size: int | None = None,
              download: bool = False, val_fraction: float = 0.1, train_size: int | None = None,
              pipeline: dict | None = None, workers: int | None = None) -> DataBundle:
    """Load a dataset by name into train/val/test splits.

    Args:
        name: one of DATA_NAMES.
        root: the local directory holding the data (Fashion-MNIST defaults to the Debian package's).
        image_size: resize images to this square size on the fly (default: the native size).
        download: allow torchvision to download the data into `root`.
        val_fraction: share of the training set held out, with a fixed seed, for validation.
        train_size: keep only this many training images (after the validation split).
        pipeline: imagefolder: transform options (`PIPELINE_FIELDS`; see
            `compressor.data.folder.pipeline_settings`).
        workers: imagefolder: DataLoader worker processes (default: one per CPU core, up to 8).
    """
    if name not in DATA_NAMES:
        raise CompressorError(f"unknown data '{name}'; choose one of {', '.join(DATA_NAMES)}")
    if not 0.0 < val_fraction < 1.0:
        raise CompressorError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if image_size is not None and image_size < 8:
        raise CompressorError(f"--image-size must be at least 8, got {image_size}")
    flip = True
    if name == "synthetic":
        train, test = synthetic_splits()
        classes, flip, root = [f"class{i}" for i in range(10)], False, None
    else:
        if root is None:
            if name == "fashion-mnist" and Path(FASHION_MNIST_DEFAULT_ROOT).is_dir():
                root = FASHION_MNIST_DEFAULT_ROOT
            else:
                raise CompressorError(f"data '{name}' needs --data-root (the directory that holds it)")
        rpath = Path(root).expanduser()
        if not rpath.is_dir() and not download:
            raise CompressorError(f"data root {rpath} does not exist (data '{name}')")
        rpath.mkdir(parents=True, exist_ok=True)
        if name in ("fashion-mnist", "cifar10", "cifar100"):
            train, test, classes, flip = _decoded(name, rpath, download)
        else:
            train, test, classes = list_imagefolder(rpath)
        root = str(rpath)
    num_classes = len(classes)
    if len(train) == 0 or len(test) == 0:
        raise CompressorError(f"data '{name}' has an empty split (train {len(train)}, test {len(test)})")
    for split_name, split in (("training", train), ("test", test)):
        bad = (split.labels < 0) | (split.labels >= num_classes)
        if bad.any():
            first = int(torch.nonzero(bad)[0])
            raise CompressorError(f"data '{name}': {split_name} image {first} has label {int(split.labels[first])}, "
                                  f"outside 0..{num_classes - 1} for its {num_classes} classes "
                                  f"({int(bad.sum())} such labels)")
    g = torch.Generator().manual_seed(SPLIT_SEED)
    perm = torch.randperm(len(train), generator=g)
    n_val = max(1, int(round(len(train) * val_fraction)))
    val, train = train.subset(perm[:n_val].sort().values), train.subset(perm[n_val:].sort().values)
    if train_size is not None:
        if train_size < 1:
            raise CompressorError(f"--train-size must be positive, got {train_size}")
        train = train.first(train_size)
    size = image_size or (IMAGEFOLDER_SIZE if name == "imagefolder" else int(train.images.shape[-1]))
    identity = {"name": name, "root": root, "train": len(train), "val": len(val), "test": len(test),
                "image_size": size, "train_size": train_size, "val_fraction": val_fraction}
    bundle = DataBundle(name=name, root=root, num_classes=num_classes, class_names=list(classes), train=train,
                        val=val, test=test, mean=[], std=[], image_size=size, flip=flip, identity=identity)
    if bundle.streamed:
        identity["files"] = listing_digest(Path(root), train, val, test)
        configure_stream(bundle, pipeline or {}, workers)
    else:
        x = train.images.float().div(255.0)
        bundle.mean = [round(m, 6) for m in x.mean(dim=(0, 2, 3)).tolist()]
        bundle.std = [round(s, 6) for s in x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()]
    return bundle
