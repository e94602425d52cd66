"""Data: dataset names -> splits (`datasets`), in-memory batches (`batches`), streamed folders of
photographs (`folder`), and every seed the package draws from (`seeding`).

Small tensor datasets (synthetic, Fashion-MNIST, CIFAR) are held as uint8 tensors and augmented
per batch in memory; folders of photographs are listed at start-up and decoded and augmented with
timm's pipeline in DataLoader workers. Either way augmentation is a pure function of (seed, epoch,
index), so a run is repeatable and a teacher's outputs for an (epoch, index) are for the same view.
"""

from compressor.data.batches import Batches, BatchLoader, Split
from compressor.data.bundle import DataBundle
from compressor.data.datasets import (DATA_NAMES, FASHION_CLASSES, FASHION_MNIST_DEFAULT_ROOT, IMAGEFOLDER_SIZE,
                                      load_data, synthetic_splits)
from compressor.data.folder import IMAGE_EXTENSIONS, FileSplit

__all__ = ["DATA_NAMES", "FASHION_CLASSES", "FASHION_MNIST_DEFAULT_ROOT", "IMAGEFOLDER_SIZE", "IMAGE_EXTENSIONS",
           "BatchLoader", "Batches", "DataBundle", "FileSplit", "Split", "load_data", "synthetic_splits"]
