from typing import Annotated, Optional

import typer

from compressor.cli.common import Shared, command, show
from compressor.cli.options import DataOpt, EpochsOpt, OutOpt
from compressor.stages import teach as run_teach


@command("data", "train", "runtime")
def teach(
    data: DataOpt,
    model: Annotated[str, typer.Option("--model", help="Any timm model name (e.g. resnet18) or a built-in: convtiny, convverytiny.")],
    out: OutOpt,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="Start from timm's pretrained weights (needs the network).")] = False,
    init: Annotated[Optional[str], typer.Option("--init", help="Start from these weights (.safetensors, or .pt/.pth read with weights_only=True, never unsafely); NaN/Inf weights are refused.")] = None,
    reinit_head: Annotated[bool, typer.Option("--reinit-head", help="With --init weights whose classifier has another class count: start the classifier fresh (otherwise an error). timm's --pretrained heads are replaced automatically.")] = False,
    trainable: Annotated[Optional[str], typer.Option("--trainable", help="Regex: only parameters whose names match train (the classifier always does), e.g. 'conv2|bn'.")] = None,
    epochs: EpochsOpt = 3,
    *,
    shared: Shared,
) -> None:
    """Fine-tune a teacher on your data: any timm model, pretrained or from a checkpoint."""
    metrics = run_teach(data=shared.data(data), model=model, out=out, pretrained=pretrained, init=init,
                        trainable=trainable, train=shared.train(epochs), reinit_head=reinit_head,
                        resume=shared.resume, device=shared.device_name)
    show(metrics, shared.json_, f"teach -> {out}")
