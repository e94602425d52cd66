"""ONNX export, int8 static quantization (QDQ), verification against PyTorch, and latency."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

from compressor import CompressorError

OPSET = 17


def export_onnx(model: nn.Module, path: Path, input_shape: list[int]) -> None:
    """Export with one input `input` (N x C x H x W, dynamic N) and one output `logits`."""
    model = model.eval().cpu()
    dummy = torch.zeros(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (dummy,), str(path), input_names=["input"], output_names=["logits"],
                              opset_version=OPSET, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              dynamo=False, do_constant_folding=True)
        except Exception as e:  # noqa: BLE001 - the exporter's errors are long; keep the first line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CompressorError(f"ONNX export of {type(model).__name__} failed: {first[:300]}") from None
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


class _Reader:
    """onnxruntime CalibrationDataReader over a list of numpy batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches, self.i = batches, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {"input": self.batches[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: list[np.ndarray], per_channel: bool = True,
                  method: str = "minmax") -> None:
    """Static QDQ quantization: uint8 activations, int8 weights (per channel by default).

    uint8 activations: on x86 CPUs without VNNI, onnxruntime's int8-activation kernels are far
    slower than fp32, while u8s8 runs faster.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise CompressorError("int8 quantization needs at least one calibration batch")
    if method not in CALIBRATION_METHODS:
        raise CompressorError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, got '{method}'")
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(dir=Path(int8_path).parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        # the calibrators print to stdout, which belongs to --json: keep it clean
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(int8_path), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calibrate,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    import onnx

    onnx.checker.check_model(str(int8_path), full_check=True)


def convert_fp16(fp32_path: Path, fp16_path: Path) -> None:
    """fp16 weights and activations, with float32 input and output kept for the caller."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    _toposort(model.graph)  # the converter appends its input casts at the end of the node list
    onnx.save(model, str(fp16_path))
    onnx.checker.check_model(str(fp16_path), full_check=True)


def _toposort(graph) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise CompressorError("the fp16 graph has a cycle or a missing input; cannot order it")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_predict(sess, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    outs, labels = [], []
    for x, y in batches:
        outs.append(sess.run(["logits"], {"input": x.numpy()})[0])
        labels.append(y.numpy())
    return np.concatenate(outs), np.concatenate(labels)


def latency_ms(sess, input_shape: list[int], batch: int = 64, runs: int = 30, warmup: int = 5) -> float:
    """Median wall time of one forward pass at `batch`, warm-up excluded."""
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    for _ in range(warmup):
        sess.run(["logits"], {"input": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(["logits"], {"input": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def onnx_latency(model: nn.Module, input_shape: list[int], workdir: Path, batch: int = 64) -> float:
    """fp32 onnxruntime latency (ms) of a PyTorch model at `batch`, through a temporary export."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "probe.onnx"
        export_onnx(model, path, input_shape)
        return latency_ms(session(path), input_shape, batch)


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def convs_wrapped_in_qdq(path: Path) -> bool:
    """True when every Conv reads its data and weight from DequantizeLinear and feeds a QuantizeLinear."""
    import onnx

    graph = onnx.load(str(path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if not convs:
        return False
    for c in convs:
        if any(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in c.input[:2]):
            return False
        outs = consumers.get(c.output[0], [])
        if not outs or any(o.op_type not in ("QuantizeLinear", "Relu") for o in outs):
            return False
    return True
