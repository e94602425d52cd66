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


def check_calibration_method(method: str) -> None:
    if method not in CALIBRATION_METHODS:
        raise CompressorError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, got '{method}'")


def fp32_stem(model) -> list[str]:
    """Prepare the stem (the first Conv, reading the graph input, of at most 4 channels, then an
    optional Relu and a MaxPool) to stay float32; return its node names. A first Conv followed by
    neither Relu nor MaxPool is kept float32 alone; a Conv -> Relu not followed by one MaxPool, or
    no such Conv, gives [] (all int8).

    onnxruntime's int8 convolution spends most of its time on im2col when an image has 1-4 channels
    (about 8x the fp32 kernel on a 28x28 grayscale batch), whatever the layer's width, while its fp32
    NCHWc kernels fuse Conv and MaxPool. Conv -> Relu -> MaxPool is rewritten Conv -> MaxPool -> Relu
    (max-pooling commutes with ReLU: the same outputs), so Conv and MaxPool run in float32 and the
    quantized part starts at the ReLU, on a tensor four times smaller.
    """
    import onnx.numpy_helper as nph

    g = model.graph
    nodes = list(g.node)
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inputs = {i.name for i in g.input} - set(inits)
    conv = next((n for n in nodes if n.op_type == "Conv" and n.input[0] in inputs), None)
    if conv is None or conv.input[1] not in inits or nph.to_array(inits[conv.input[1]]).shape[1] > 4:
        return []
    nxt = consumers.get(conv.output[0], [])
    if len(nxt) != 1:
        return []
    if nxt[0].op_type == "MaxPool":
        return [conv.name, nxt[0].name]
    relu = nxt[0]
    pool = consumers.get(relu.output[0], [])
    if relu.op_type != "Relu" or len(pool) != 1 or pool[0].op_type != "MaxPool" or len(pool[0].output) != 1:
        return [conv.name] if relu.op_type != "Relu" else []
    pool = pool[0]
    mid, out = relu.output[0], pool.output[0]
    pool.input[0], pool.output[0] = conv.output[0], mid
    relu.input[0], relu.output[0] = mid, out
    i, j = nodes.index(relu), nodes.index(pool)
    nodes[i], nodes[j] = pool, relu
    del g.node[:]
    g.node.extend(nodes)
    keep = [v for v in g.value_info if v.name != mid]  # its shape changed: let inference redo it
    del g.value_info[:]
    g.value_info.extend(keep)
    return [conv.name, pool.name]


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: list[np.ndarray], per_channel: bool = True,
                  method: str = "minmax", keep_stem_fp32: bool = False) -> list[str]:
    """Static QDQ quantization: uint8 activations, int8 weights (per channel by default).

    uint8 activations: on x86 CPUs without VNNI, onnxruntime's int8-activation kernels are far
    slower than fp32, while u8s8 runs faster. `keep_stem_fp32`: see `fp32_stem`. Returns the names
    of the nodes left in float32.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise CompressorError("int8 quantization needs at least one calibration batch")
    check_calibration_method(method)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(dir=Path(int8_path).parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        # the calibrators print to stdout, which belongs to --json: keep it clean
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            excluded: list[str] = []
            if keep_stem_fp32:
                import onnx

                model = onnx.load(str(pre))
                excluded = fp32_stem(model)
                onnx.save(onnx.shape_inference.infer_shapes(model), str(pre))
            quantize_static(str(pre), str(int8_path), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calibrate, nodes_to_exclude=excluded,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    import onnx

    onnx.checker.check_model(str(int8_path), full_check=True)
    return excluded


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


def convs_wrapped_in_qdq(path: Path, skip: Iterable[str] = ()) -> bool:
    """True when every Conv (but those named in `skip`, left float32 on purpose) reads its data and
    weight from DequantizeLinear and feeds a QuantizeLinear."""
    import onnx

    graph = onnx.load(str(path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name not in set(skip)]
    if not convs:
        return False
    for c in convs:
        if any(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in c.input[:2]):
            return False
        outs = consumers.get(c.output[0], [])
        if not outs or any(o.op_type not in ("QuantizeLinear", "Relu") for o in outs):
            return False
    return True
