from __future__ import annotations

from typing import Annotated, Optional

import typer

from compressor.cli.common import data_options, guarded, runtime, show, train_config
from compressor.cli.options import (BatchOpt, DataOpt, DataRootOpt, DeviceOpt, DownloadOpt, ImageSizeOpt, JsonOpt, LrOpt,
                                    ModelDirArg, OptimOpt, OutOpt, QuietOpt, SeedOpt, TrainSizeOpt, WeightDecayOpt,
                                    WorkersOpt)
from compressor.stages import prune as run_prune


@guarded
def prune(
    model_dir: ModelDirArg,
    data: DataOpt,
    sparsity: Annotated[float, typer.Option("--sparsity", help="Fraction of conv/linear weights to zero, in [0, 1).")],
    out: OutOpt,
    structured: Annotated[bool, typer.Option("--structured", help="Remove whole channels (not implemented yet).")] = False,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Fine-tuning epochs; pruned weights stay exactly zero.")] = 1,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="Teacher artifact: fine-tune while distilling (kd).")] = None,
    temperature: Annotated[float, typer.Option("--temperature", "-T", help="KD temperature when --teacher is given.")] = 4.0,
    alpha: Annotated[float, typer.Option("--alpha", help="Hard-label weight when --teacher is given (0.5: mean of soft and hard targets).")] = 0.5,
    lr: LrOpt = 0.01,
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
    """Global magnitude pruning to a target sparsity, then fine-tuning that keeps the zeros."""
    runtime(quiet, workers)
    metrics = run_prune(model_dir, data=data_options(data, data_root, image_size, download, train_size), out=out,
                        sparsity=sparsity, structured=structured, finetune_epochs=finetune_epochs, teacher=teacher,
                        temperature=temperature, alpha=alpha,
                        train=train_config(finetune_epochs, lr, batch_size, optimizer, weight_decay, seed),
                        device=getattr(device, "value", device))
    show(metrics, json_, f"prune -> {out}")
