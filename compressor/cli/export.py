from typing import Annotated, Optional

import typer

from compressor.cli.common import Shared, command, show
from compressor.cli.options import CalibMethod, DataOpt, ModelDirArg, OutOpt, QuantFormat
from compressor.stages import export as run_export


@command("data", "runtime")
def export(
    model_dir: ModelDirArg,
    data: DataOpt,
    out: OutOpt,
    onnx: Annotated[bool, typer.Option("--onnx", help="Write model.onnx (fp32, opset 17, dynamic batch). Always on.")] = True,
    int8: Annotated[bool, typer.Option("--int8", help="Also write model.int8.onnx: static QDQ, uint8 activations, per-channel int8 weights.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write model.fp16.onnx (fp16 weights and compute, float32 input/output).")] = False,
    calibration_batches: Annotated[int, typer.Option("--calibration-batches", help="Training batches (64 images) used to calibrate int8.")] = 8,
    calibration_method: Annotated[CalibMethod, typer.Option("--calibration-method", help="How activation ranges are set from the calibration data.")] = CalibMethod("minmax"),
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", help="int8 weight scales per output channel (default) or one per tensor.")] = True,
    quant_format: Annotated[QuantFormat, typer.Option("--format", help="Quantized graph format: qdq (QuantizeLinear/DequantizeLinear around each op).")] = QuantFormat("qdq"),
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="Fail (exit 1, artifact marked failed) if int8 loses more than this many accuracy points.")] = None,
    latency_batch: Annotated[int, typer.Option("--latency-batch", help="Batch size for the latency measurement.")] = 64,
    fp32_stem: Annotated[bool, typer.Option("--fp32-stem", help="int8: keep the first conv (on a 1-4 channel input) and its max-pool in float32, where onnxruntime's int8 kernel is slowest; the rest is int8.")] = False,
    *,
    shared: Shared,
) -> None:
    """Export to ONNX (and int8), check against PyTorch, measure accuracy, size and latency."""
    metrics = run_export(model_dir, data=shared.data(data), out=out, onnx=onnx, int8=int8, fp16=fp16,
                         calibration_batches=calibration_batches, calibration_method=calibration_method.value,
                         per_channel=per_channel, quant_format=quant_format.value, max_drop=max_drop, latency_batch=latency_batch, fp32_stem=fp32_stem,
                         seed=shared.seed, device=shared.device_name)
    show(metrics, shared.json_, f"export -> {out}")
