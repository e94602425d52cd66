from typing import Annotated, Optional

import typer

from compressor.cli.common import Shared, command, show
from compressor.cli.options import DataOpt
from compressor.stages import evaluate as run_evaluate


@command("data", "runtime")
def evaluate(
    target: Annotated[str, typer.Argument(help="Artifact directory, or an .onnx file with its model.json beside it.")],
    data: DataOpt,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="Teacher artifact: also report agreement with it.")] = None,
    *,
    shared: Shared,
) -> None:
    """Test-split accuracy of a model directory or ONNX file (and agreement with a teacher)."""
    metrics = run_evaluate(target, data=shared.data(data), teacher=teacher, device=shared.device_name)
    show(metrics, shared.json_, f"eval {target}")
