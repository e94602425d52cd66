from __future__ import annotations

from typing import Annotated, Optional

import typer

from compressor.cli.common import data_options, guarded, runtime, show, train_config
from compressor.cli.options import (BatchOpt, DataOpt, DataRootOpt, DeviceOpt, DownloadOpt, EpochsOpt, ImageSizeOpt,
                                    JsonOpt, LrOpt, Method, OptimOpt, OutOpt, QuietOpt, Scheme, SeedOpt, TrainSizeOpt,
                                    WeightDecayOpt, WorkersOpt)
from compressor.stages import distill as run_distill


@guarded
def distill(
    teacher: Annotated[str, typer.Option("--teacher", help="Artifact directory of the teacher (from teach).")],
    student: Annotated[str, typer.Option("--student", help="Student model: convtiny, convverytiny or any timm name.")],
    data: DataOpt,
    out: OutOpt,
    method: Annotated[Method, typer.Option("--method", help="Knowledge type: kd (Hinton), mse, fitnet, at, rkd, vid, l2tww.")] = "kd",
    scheme: Annotated[Scheme, typer.Option("--scheme", help="offline (frozen teacher), online, self.")] = "offline",
    temperature: Annotated[float, typer.Option("--temperature", "-T", help="Softmax temperature T for kd (loss scaled by T^2).")] = 4.0,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the hard-label loss; 1 - alpha goes to the teacher (alpha = 1: no teacher).")] = 0.5,
    channels: Annotated[Optional[str], typer.Option("--channels", help="Select artifact: restrict teacher features to its kept channels.")] = None,
    control: Annotated[bool, typer.Option("--control", help="Also train the student alone (alpha = 1, same budget and seed) and report control_accuracy.")] = False,
    epochs: EpochsOpt = 5,
    lr: LrOpt = 0.05,
    batch_size: BatchOpt = 128,
    optimizer: OptimOpt = "sgd",
    weight_decay: WeightDecayOpt = 5e-4,
    data_root: DataRootOpt = None,
    image_size: ImageSizeOpt = None,
    download: DownloadOpt = False,
    train_size: TrainSizeOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a student from a teacher's knowledge; reports accuracy, agreement and teacher accuracy."""
    runtime(quiet, workers)
    metrics = run_distill(teacher=teacher, student=student, data=data_options(data, data_root, image_size, download, train_size),
                          out=out, method=method.value, scheme=scheme.value, temperature=temperature, alpha=alpha,
                          channels=channels, control=control,
                          train=train_config(epochs, lr, batch_size, optimizer, weight_decay, seed),
                          device=getattr(device, "value", device))
    show(metrics, json_, f"distill -> {out}")
