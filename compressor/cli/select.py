from typing import Annotated

import typer

from compressor.cli.common import Shared, command, show, stdout
from compressor.cli.options import DataOpt, ModelDirArg, OutOpt
from compressor.stages import select as run_select


@command("data", "runtime")
def select(
    model_dir: ModelDirArg,
    data: DataOpt,
    top_k: Annotated[int, typer.Option("--top-k", help="Channels to keep per layer (all of a layer's, if it has fewer).")],
    out: OutOpt,
    layers: Annotated[str, typer.Option("--layers", help="'auto' (each stage's output before a downsampling, from timm feature_info) or comma-separated module names.")] = "auto",
    samples: Annotated[int, typer.Option("--samples", help="Training images used to score channels (no augmentation).")] = 5000,
    *,
    shared: Shared,
) -> None:
    """Rank each feature map of chosen layers by class discriminability; keep the top k.

    Score = std across classes of the class-mean activation, averaged over positions.
    """
    metrics = run_select(model_dir, data=shared.data(data), out=out, top_k=top_k, layers=layers, samples=samples,
                         seed=shared.seed, device=shared.device_name)
    show(metrics, shared.json_, f"select -> {out}")
    if not shared.json_:
        for name, v in metrics["layers"].items():
            stdout.print(f"  {name}: kept {v['kept']} of {v['channels']} channels")
