"""The ONNX graph: export from PyTorch (float32 and the QDQ graph of a fake-quantized model),
the rewrites that make it faster on the runtimes, fp16 conversion, and what a graph holds."""

from __future__ import annotations

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
            raise CompressorError(f"ONNX export of {type(model).__name__} failed: {error_line(e)}") from None
    import onnx

    model = onnx.load(str(path))
    if spatial_means_as_average_pools(model):
        onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def export_qdq(model: nn.Module, path: Path, input_shape: list[int]) -> None:
    """Export a fake-quantized model (compressor.deploy.qat) as a QDQ ONNX file: torch.onnx writes each
    FakeQuantize as QuantizeLinear -> DequantizeLinear with its scale and zero point; the weights'
    QuantizeLinear is then computed once, so the file stores int8 weights as onnxruntime's quantizer does."""
    export_onnx(model, path, input_shape)
    import onnx

    proto = onnx.load(str(path))
    if weights_stored_int8(proto):
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path), full_check=True)


def weights_stored_int8(model) -> int:
    """Replace each QuantizeLinear whose inputs are all constants (a weight, its scales and zero
    points) by its int8 result, stored as an initializer; drop the float weights no longer read.
    Rounds half to even, as QuantizeLinear does. Return how many were replaced."""
    import onnx.numpy_helper as nph

    g = model.graph
    consts = {t.name: nph.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = nph.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    keep, added = [], []
    for n in g.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or not all(i in consts for i in n.input):
            keep.append(n)
            continue
        x, scale, zp = (consts[i] for i in n.input[:3])
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        shape = [1] * x.ndim
        if scale.size > 1:
            shape[axis] = -1
        info = np.iinfo(zp.dtype)
        q = np.rint(x / scale.reshape(shape)) + zp.astype(np.int64).reshape(shape)
        added.append(nph.from_array(np.clip(q, info.min, info.max).astype(zp.dtype), n.output[0]))
    if not added:
        return 0
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(added)
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    unused = [t for t in g.initializer if t.name not in read]
    for t in unused:
        g.initializer.remove(t)
    return len(added)


def spatial_means_as_average_pools(model) -> list[str]:
    """Rewrite each mean over the whole image (GlobalAveragePool, or ReduceMean over axes 2 and 3 of
    a 4-d tensor: the global pool of a head, the squeeze of squeeze-and-excitation) whose height and
    width are fixed as an AveragePool with that kernel: the same function; return the rewritten
    nodes' names. The export fixes every size but the batch, so the kernel is known.

    OpenVINO's CPU plugin runs ReduceMean (what it makes of both) far slower than a pooling kernel;
    onnxruntime runs both alike (benchmarks/profile_ops.py shows the per-operator times)."""
    import onnx
    from onnx import helper

    graph = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for v in list(graph.input) + list(graph.value_info):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    done, nodes = [], []
    for node in model.graph.node:
        shape = shapes.get(node.input[0]) if node.input else None
        if not shape or len(shape) != 4 or not shape[2] or not shape[3]:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        keepdims = attrs.get("keepdims", 1)
        if node.op_type == "GlobalAveragePool":
            keepdims = 1
        elif not (node.op_type == "ReduceMean" and len(node.input) == 1
                  and sorted(a % 4 for a in attrs.get("axes", [])) == [2, 3]):
            nodes.append(node)
            continue
        out = node.output[0] if keepdims else node.output[0] + "_pooled"
        nodes.append(helper.make_node("AveragePool", [node.input[0]], [out], name=node.name,
                                      kernel_shape=[shape[2], shape[3]]))
        if not keepdims:  # N x C x 1 x 1 -> N x C, as ReduceMean(keepdims=0) gives
            nodes.append(helper.make_node("Flatten", [out], [node.output[0]], name=node.name + "_flatten", axis=1))
        done.append(node.name)
    if done:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return done


def fp32_stem(model) -> list[str]:
    """Prepare the stem (the first Conv, reading the graph input, of at most 4 channels, then an
    optional Relu and a MaxPool) to stay float32; return its node names. A first Conv followed by
    neither Relu nor MaxPool, or read by several nodes, is kept float32 alone; a Conv -> Relu not followed by one MaxPool, or
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
    if len(nxt) != 1:  # e.g. hard-swish as x * HardSigmoid(x) (MobileNetV3): the conv alone stays float32
        return [conv.name]
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


def model_files(path: Path) -> list[Path]:
    """The files of one model: an ONNX file, or OpenVINO's IR (the .xml and the .bin beside it)."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def input_shape_of(path: Path) -> list[int]:
    """C, H, W of an ONNX model's input (the batch dimension is dynamic)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [int(d.dim_value) for d in dims[1:]]


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


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def float_convs(path: Path) -> list[str]:
    """The Conv nodes of a QDQ file that read a float input (not a DequantizeLinear): those left float32."""
    import onnx

    graph = onnx.load(str(path)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    return [n.name for n in graph.node if n.op_type == "Conv" and producers.get(n.input[0]) != "DequantizeLinear"]


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


def error_line(e: Exception) -> str:
    """The line of a library's long error that says what is wrong: the first one that is not
    OpenVINO's "Exception from FILE:LINE:" / "Check '...' failed at" location lines."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '"))]
    return (said or lines or [type(e).__name__])[0][:300]
