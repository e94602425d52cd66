from typing import Annotated, Optional

import typer

from compressor.cli.common import Shared, command, show
from compressor.cli.options import DataOpt, EpochsOpt, Method, OutOpt, Scheme
from compressor.stages import distill as run_distill


@command("data", "train", "runtime")
def distill(
    teacher: Annotated[str, typer.Option("--teacher", help="Artifact directory of the teacher (from teach).")],
    student: Annotated[str, typer.Option("--student", help="Student model: convtiny, convverytiny or any timm name.")],
    data: DataOpt,
    out: OutOpt,
    method: Annotated[Method, typer.Option("--method", help="Knowledge type: kd (Hinton), mse, fitnet, at, rkd, vid, l2tww.")] = Method.kd,
    scheme: Annotated[Scheme, typer.Option("--scheme", help="offline (frozen teacher), online, self.")] = Scheme.offline,
    temperature: Annotated[float, typer.Option("--temperature", "-T", help="Softmax temperature T for kd (loss scaled by T^2).")] = 4.0,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the hard-label loss; 1 - alpha goes to the teacher (alpha = 1: no teacher).")] = 0.5,
    channels: Annotated[Optional[str], typer.Option("--channels", help="Select artifact: restrict teacher features to its kept channels.")] = None,
    control: Annotated[bool, typer.Option("--control", help="Also train the student alone (alpha = 1, same budget and seed) and report control_accuracy.")] = False,
    epochs: EpochsOpt = 5,
    *,
    shared: Shared,
) -> None:
    """Train a student from a teacher's knowledge; reports accuracy, agreement and teacher accuracy."""
    metrics = run_distill(teacher=teacher, student=student, data=shared.data(data), out=out, method=method.value,
                          scheme=scheme.value, temperature=temperature, alpha=alpha, channels=channels,
                          control=control, train=shared.train(epochs), device=shared.device_name)
    show(metrics, shared.json_, f"distill -> {out}")
