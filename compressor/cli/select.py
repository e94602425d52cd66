from __future__ import annotations

from typing import Annotated

import typer

from compressor.cli.common import data_options, guarded, runtime, show
from compressor.cli.options import (DataOpt, DataRootOpt, DeviceOpt, DownloadOpt, ImageSizeOpt, JsonOpt, ModelDirArg,
                                    OutOpt, QuietOpt, SeedOpt, TrainSizeOpt, WorkersOpt)
from compressor.stages import select as run_select


@guarded
def select(
    model_dir: ModelDirArg,
    data: DataOpt,
    top_k: Annotated[int, typer.Option("--top-k", help="Channels to keep per layer (all of a layer's, if it has fewer).")],
    out: OutOpt,
    layers: Annotated[str, typer.Option("--layers", help="'auto' (each stage's output before a downsampling, from timm feature_info) or comma-separated module names.")] = "auto",
    samples: Annotated[int, typer.Option("--samples", help="Training images used to score channels (no augmentation).")] = 5000,
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
    """Rank each feature map of chosen layers by class discriminability; keep the top k.

    Score = std across classes of the class-mean activation, averaged over positions.
    """
    runtime(quiet, workers)
    metrics = run_select(model_dir, data=data_options(data, data_root, image_size, download, train_size), out=out,
                         top_k=top_k, layers=layers, samples=samples, seed=seed, device=getattr(device, "value", device))
    show(metrics, json_, f"select -> {out}")
    if not json_:
        from compressor.cli.common import stdout

        for name, v in metrics["layers"].items():
            stdout.print(f"  {name}: kept {v['kept']} of {v['channels']} channels")
