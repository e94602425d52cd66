"""Option aliases shared by every command (one place, as huggingface_hub's CLI does)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from compressor.data import DATA_NAMES


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Optim(str, Enum):
    sgd = "sgd"
    adam = "adam"


class Method(str, Enum):
    kd = "kd"
    mse = "mse"
    fitnet = "fitnet"
    at = "at"
    rkd = "rkd"
    vid = "vid"
    l2tww = "l2tww"


class Scheme(str, Enum):
    offline = "offline"
    online = "online"
    self = "self"


class Schedule(str, Enum):
    oneshot = "oneshot"
    gradual = "gradual"


class Scope(str, Enum):
    global_ = "global"
    layer = "layer"


class Importance(str, Enum):
    magnitude = "magnitude"
    discriminability = "discriminability"


class CalibMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class QuantFormat(str, Enum):
    qdq = "qdq"


class PairMode(str, Enum):
    matched = "matched"
    all = "all"


DataOpt = Annotated[str, typer.Option("--data", help=f"Dataset name: {', '.join(DATA_NAMES)}.")]
DataRootOpt = Annotated[Optional[str], typer.Option(
    "--data-root", help="Directory holding the data (fashion-mnist defaults to /usr/share/datasets/fashion-mnist; "
    "imagefolder wants train/ and val/ class folders).")]
ImageSizeOpt = Annotated[Optional[int], typer.Option(
    "--image-size", help="Resize images to this square size (default: native size, or the upstream model's).")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Allow torchvision to download the dataset into --data-root.")]
TrainSizeOpt = Annotated[Optional[int], typer.Option(
    "--train-size", help="Use only the first N training images (after the fixed validation split).")]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Training epochs.")]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (cosine schedule down to 0).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Training batch size.")]
OptimOpt = Annotated[Optim, typer.Option("--optimizer", help="SGD with Nesterov momentum 0.9, or Adam.")]
WeightDecayOpt = Annotated[float, typer.Option("--weight-decay", help="L2 weight decay.")]
OutOpt = Annotated[str, typer.Option("--out", help="Artifact directory to write (replaced atomically if it is one).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for initialization, data order and augmentation.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to train: auto picks cuda when available.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", help="CPU threads for PyTorch and onnxruntime (default: all cores).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout (progress stays on stderr).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
ModelDirArg = Annotated[str, typer.Argument(help="Artifact directory of the model to read.")]
