from typing import Annotated, Optional

import typer

from compressor.cli.common import Shared, command, show
from compressor.cli.options import DataOpt, ModelDirArg, OutOpt
from compressor.stages import prune as run_prune


@command("data", "train", "runtime", lr=0.01)
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
    *,
    shared: Shared,
) -> None:
    """Global magnitude pruning to a target sparsity, then fine-tuning that keeps the zeros."""
    metrics = run_prune(model_dir, data=shared.data(data), out=out, sparsity=sparsity, structured=structured,
                        finetune_epochs=finetune_epochs, teacher=teacher, temperature=temperature, alpha=alpha,
                        train=shared.train(finetune_epochs), device=shared.device_name)
    show(metrics, shared.json_, f"prune -> {out}")
