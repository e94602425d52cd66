from typing import Annotated, Optional

import typer

from compressor.cli.common import Shared, command, show
from compressor.cli.options import DataOpt, Importance, Method, ModelDirArg, OutOpt, Schedule, Scope
from compressor.stages import prune as run_prune


@command("data", "train", "runtime", lr=0.01)
def prune(
    model_dir: ModelDirArg,
    data: DataOpt,
    sparsity: Annotated[float, typer.Option("--sparsity", help="Fraction of conv/linear weights to zero, in [0, 1).")],
    out: OutOpt,
    structured: Annotated[bool, typer.Option("--structured", help="Remove whole output channels of convolutions (and their inputs downstream): a physically smaller, faster model. --sparsity is then the fraction of channels.")] = False,
    schedule: Annotated[Schedule, typer.Option("--schedule", help="oneshot, or gradual: Zhu & Gupta's cubic ramp from 0 to --sparsity over the first 3/4 of fine-tuning.")] = Schedule("gradual"),
    scope: Annotated[Scope, typer.Option("--scope", help="global: one magnitude threshold across layers; layer: the same sparsity in each layer.")] = Scope("global"),
    include_all: Annotated[bool, typer.Option("--include-all", help="Also prune the first convolution and the classifier (excluded by default).")] = False,
    importance: Annotated[Importance, typer.Option("--importance", help="--structured: magnitude (filter L2 norm) or discriminability (select's scores; needs --channels).")] = Importance("magnitude"),
    channels: Annotated[Optional[str], typer.Option("--channels", help="Select artifact of this model, for --importance discriminability.")] = None,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Fine-tuning epochs; pruned weights stay exactly zero.")] = 1,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="Teacher artifact: fine-tune while distilling.")] = None,
    method: Annotated[Method, typer.Option("--method", help="Distillation method when --teacher is given (kd, mse, fitnet, at, rkd, vid, l2tww).")] = Method("kd"),
    temperature: Annotated[float, typer.Option("--temperature", "-T", help="KD temperature when --teacher is given.")] = 4.0,
    alpha: Annotated[float, typer.Option("--alpha", help="Hard-label weight when --teacher is given (0.5: mean of soft and hard targets).")] = 0.5,
    *,
    shared: Shared,
) -> None:
    """Magnitude pruning to a target sparsity with fine-tuning that keeps the zeros, or --structured
    channel removal; reports sparsity per layer, params, raw and zipped size before and after."""
    metrics = run_prune(model_dir, data=shared.data(data), out=out, sparsity=sparsity, structured=structured,
                        schedule=schedule.value, scope=scope.value, include_all=include_all,
                        importance=importance.value, channels=channels, finetune_epochs=finetune_epochs,
                        teacher=teacher, method=method.value, temperature=temperature, alpha=alpha,
                        train=shared.train(finetune_epochs), resume=shared.resume, device=shared.device_name)
    show(metrics, shared.json_, f"prune -> {out}")
