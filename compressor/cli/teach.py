from __future__ import annotations

from typing import Annotated, Optional

import typer

from compressor.cli.common import data_options, guarded, runtime, show, train_config
from compressor.cli.options import (BatchOpt, DataOpt, DataRootOpt, DeviceOpt, DownloadOpt, EpochsOpt, ImageSizeOpt,
                                    JsonOpt, LrOpt, OptimOpt, OutOpt, QuietOpt, SeedOpt, TrainSizeOpt, WeightDecayOpt,
                                    WorkersOpt)
from compressor.stages import teach as run_teach


@guarded
def teach(
    data: DataOpt,
    model: Annotated[str, typer.Option("--model", help="Any timm model name (e.g. resnet18) or a built-in: convtiny, convverytiny.")],
    out: OutOpt,
    data_root: DataRootOpt = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="Start from timm's pretrained weights (needs the network).")] = False,
    init: Annotated[Optional[str], typer.Option("--init", help="Start from these weights (.safetensors, or .pt/.pth read with weights_only=True); tensors whose shape differs (another head) start fresh.")] = None,
    trainable: Annotated[Optional[str], typer.Option("--trainable", help="Regex: only parameters whose names match train (the classifier always does), e.g. 'conv2|bn'.")] = None,
    epochs: EpochsOpt = 3,
    lr: LrOpt = 0.05,
    batch_size: BatchOpt = 128,
    optimizer: OptimOpt = "sgd",
    weight_decay: WeightDecayOpt = 5e-4,
    image_size: ImageSizeOpt = None,
    download: DownloadOpt = False,
    train_size: TrainSizeOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a teacher on your data: any timm model, pretrained or from a checkpoint."""
    runtime(quiet, workers)
    metrics = run_teach(data=data_options(data, data_root, image_size, download, train_size), model=model, out=out,
                        pretrained=pretrained, init=init, trainable=trainable,
                        train=train_config(epochs, lr, batch_size, optimizer, weight_decay, seed),
                        device=getattr(device, "value", device))
    show(metrics, json_, f"teach -> {out}")
