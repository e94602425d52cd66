"""Option aliases shared by every command (one place, as huggingface_hub's CLI does)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from compressor.data import DATA_NAMES
from compressor.distill import METHOD_NAMES, SCHEME_NAMES
from compressor.export import CALIBRATION_METHODS


def choices(name: str, values) -> type[Enum]:
    """A str Enum of the given values: typer shows them in --help and rejects anything else."""
    return Enum(name, {v: v for v in values}, type=str)


# Choices come from the library's own lists, so the CLI cannot drift from what is implemented.
Device = choices("Device", ("auto", "cpu", "cuda"))
Optim = choices("Optim", ("sgd", "adam"))
Method = choices("Method", METHOD_NAMES)
Scheme = choices("Scheme", SCHEME_NAMES)
Schedule = choices("Schedule", ("oneshot", "gradual"))
Scope = choices("Scope", ("global", "layer"))
Importance = choices("Importance", ("magnitude", "discriminability"))
CalibMethod = choices("CalibMethod", CALIBRATION_METHODS)
QuantFormat = choices("QuantFormat", ("qdq",))
PairMode = choices("PairMode", ("matched", "all"))


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
RecipeDeviceOpt = Annotated[Optional[str], typer.Option("--device", help="Override the recipe's device: auto, cpu or cuda.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of this same command from its checkpoint (.OUT.checkpoint/ beside --out); an error if there is none.")]
OutOpt = Annotated[str, typer.Option("--out", help="Artifact directory to write (replaced atomically if it is one).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for initialization, data order and augmentation.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to train: auto picks cuda when available.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", help="CPU threads for PyTorch and onnxruntime (default: all cores).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout (progress stays on stderr).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
ModelDirArg = Annotated[str, typer.Argument(help="Artifact directory of the model to read.")]
