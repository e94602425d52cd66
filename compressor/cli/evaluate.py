from __future__ import annotations

from typing import Annotated, Optional

import typer

from compressor.cli.common import data_options, guarded, runtime, show
from compressor.cli.options import (DataOpt, DataRootOpt, DeviceOpt, DownloadOpt, ImageSizeOpt, JsonOpt, QuietOpt,
                                    TrainSizeOpt, WorkersOpt)
from compressor.stages import evaluate as run_evaluate


@guarded
def evaluate(
    target: Annotated[str, typer.Argument(help="Artifact directory, or an .onnx file with its model.json beside it.")],
    data: DataOpt,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="Teacher artifact: also report agreement with it.")] = None,
    data_root: DataRootOpt = None,
    image_size: ImageSizeOpt = None,
    download: DownloadOpt = False,
    train_size: TrainSizeOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Test-split accuracy of a model directory or ONNX file (and agreement with a teacher)."""
    runtime(quiet, workers)
    metrics = run_evaluate(target, data=data_options(data, data_root, image_size, download, train_size),
                           teacher=teacher, device=getattr(device, "value", device))
    show(metrics, json_, f"eval {target}")
