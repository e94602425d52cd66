"""ONNX export, int8 static quantization (QDQ), verification against PyTorch, and latency."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

from compressor import CompressorError
from compressor.console import progress

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
            raise CompressorError(f"ONNX export of {type(model).__name__} failed: {_reason(e)}") from None
    import onnx

    model = onnx.load(str(path))
    if spatial_means_as_average_pools(model):
        onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def export_qdq(model: nn.Module, path: Path, input_shape: list[int]) -> None:
    """Export a fake-quantized model (compressor.quantize) as a QDQ ONNX file: torch.onnx writes each
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


@dataclass(frozen=True)
class Int8Form:
    """How a model is quantized: these choices decide the int8 model's speed on a given CPU and runtime.

    quantizer: onnxruntime's quantize_static (a QDQ ONNX file, for every runtime), "nncf":
    OpenVINO's own post-training quantizer (an IR, for OpenVINO alone; it places the quantizers where
    OpenVINO's CPU kernels fuse them, and chooses the other three itself: they are None), or
    "quantize": the scheme `compress quantize` trains (compressor.quantize), its ranges learned, or
    "layers": that scheme calibrated without training (a QDQ file written from the PyTorch model);
    stem: the first Conv on a 1-4 channel input (and its MaxPool) in int8 or float32 (see `fp32_stem`);
    activations: uint8 (u8s8 kernels) or int8 (s8s8; VNNI/AMX kernels on recent x86);
    per_channel: one weight scale per output channel, or one per tensor.
    """

    stem: str | None = "int8"
    activations: str | None = "u8"
    per_channel: bool | None = True
    quantizer: str = "onnxruntime"

    def label(self) -> str:
        if self.quantizer == "nncf":
            return "NNCF (OpenVINO's quantizer, performance preset)"
        if self.quantizer in ("quantize", "layers"):
            how = "learned by compress quantize" if self.quantizer == "quantize" else "calibrated"
            return (f"layers only ({how}): convolutions and linear layers in int8 (u8 activations, per-channel "
                    "weights), float32 between them (stem float32 on 1-4 channel images)")
        return (f"stem {self.stem}, {self.activations} activations, "
                f"{'per-channel' if self.per_channel else 'per-tensor'} weights")


NNCF_FORM = Int8Form(None, None, None, "nncf")
LAYERS_FORM = Int8Form(None, "u8", True, "layers")  # compress quantize's scheme, calibrated (no fine-tuning)
LEARNED_FORM = Int8Form(None, "u8", True, "quantize")  # compress quantize's scheme, its ranges learned


def nncf_available() -> bool:
    import importlib.util

    return openvino_available() and importlib.util.find_spec("nncf") is not None


def quantize_nncf(fp32_path: Path, xml_path: Path, calibration: list[np.ndarray]) -> None:
    """OpenVINO's IR of the fp32 ONNX model quantized by NNCF (performance preset: symmetric int8
    weights and activations, per-channel weights, fast bias correction) on the calibration batches."""
    import logging

    ov = _openvino()
    import nncf

    nncf.set_log_level(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # NNCF's progress bars go to stdout, which belongs to --json
        model = ov.convert_model(str(fp32_path))
        data = nncf.Dataset(calibration)
        quantized = nncf.quantize(model, data, preset=nncf.QuantizationPreset.PERFORMANCE,
                                  subset_size=sum(len(x) for x in calibration))
        ov.save_model(quantized, str(xml_path), compress_to_fp16=False)


def model_files(path: Path) -> list[Path]:
    """The files of one model: an ONNX file, or OpenVINO's IR (the .xml and the .bin beside it)."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def write_int8(src: Path, dst: Path) -> None:
    """A chosen candidate into place: an ONNX file as it is, or as OpenVINO's IR where `dst` is .xml."""
    if src.suffix == ".xml" or dst.suffix != ".xml":
        for a, b in zip(model_files(src), model_files(dst)):
            shutil.copyfile(a, b)
    else:
        save_openvino_ir(src, dst)


def preprocess(fp32_path: Path, tmp: Path) -> Path:
    """onnxruntime's pre-quantization pass (shape inference, graph optimization) into `tmp`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    return pre


def has_int8_stem_choice(pre: Path) -> bool:
    """Whether the model has a stem `fp32_stem` would keep in float32 (else stem fp32 = stem int8)."""
    import onnx

    return bool(fp32_stem(onnx.load(str(pre))))


def _quantize_preprocessed(pre: Path, int8_path: Path, calibration: list[np.ndarray], form: Int8Form,
                           method: str, ranges: Path | None = None) -> list[str]:
    """Quantize `pre` in `form` into `int8_path`; return the nodes left float32.

    `ranges`: a file for the activation ranges calibration measures (onnxruntime's calibration
    cache): computed and written when it does not exist, read when it does. They depend on the graph
    and the calibration method only, not on the activation type or the weight scales, so the forms
    of one stem share one calibration pass (at 224 px that pass is most of a candidate's cost)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as tmp:
        src, excluded = pre, []
        if form.stem == "fp32":
            import onnx

            model = onnx.load(str(pre))
            excluded = fp32_stem(model)
            src = Path(tmp) / "stem.onnx"
            onnx.save(onnx.shape_inference.infer_shapes(model), str(src))
        # the calibrators print to stdout, which belongs to --json: keep it clean
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            cache = {"calibration_cache_path": str(ranges)} if ranges is not None and _has_calibration_cache() else {}
            quantize_static(str(src), str(int8_path), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=form.per_channel,
                            activation_type=QuantType.QUInt8 if form.activations == "u8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calibrate, nodes_to_exclude=excluded,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True}, **cache)
    import onnx

    onnx.checker.check_model(str(int8_path), full_check=True)
    return excluded


def _has_calibration_cache() -> bool:
    """Whether this onnxruntime's quantize_static takes calibration_cache_path (recent releases do)."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


TIE = 0.03  # latencies within 3 % of the fastest count as equal: the first form listed of those wins
SLOW = 1.5  # a form over 1.5x the fastest's first-round latency on a runtime is timed once there, not every round
AUTO_DROP_POINTS = 1.0  # the accuracy a candidate form may lose on the calibration images when --max-drop is unset


def allowed_drop(max_drop: float | None) -> float:
    """The points of calibration accuracy an int8 form may lose: --max-drop, else AUTO_DROP_POINTS."""
    return AUTO_DROP_POINTS if max_drop is None else max_drop


@dataclass
class Int8Choice:
    """The int8 form kept for one runtime, the file it was written to, the nodes it leaves float32,
    and every candidate measured (empty when every choice was given). Where the runtime could run
    none of the forms, `form` and `path` are None and `error` says why (the first form's reason)."""

    form: Int8Form | None
    path: Path | None
    fp32_nodes: list[str]
    candidates: list[dict]
    error: str | None = None
    fallback: Path | None = None  # where the form is NNCF's: the best QDQ form, written beside it (hidden)
    fallback_form: Int8Form | None = None


def _refusal(e: Exception, path: Path) -> str:
    """Why a runtime refused a candidate file, without the temporary file's name."""
    msg = str(e) if isinstance(e, CompressorError) else _reason(e)
    return msg.split(f"{path}: ", 1)[-1]


def choose_int8_form(fp32_path: Path, outputs: dict[str, Path], calibration: list[tuple[np.ndarray, np.ndarray]],
                     stem: str = "auto", activations: str = "auto", per_channel: bool | None = None,
                     method: str = "minmax", threads: int | None = None, batch: int = 64,
                     max_drop: float | None = None, rounds: int = 3, runs: int = 10,
                     budget_s: float = 0.5, write_layers=None) -> dict[str, Int8Choice]:
    """Quantize every form the choices left open ("auto" / None) once, time each on every runtime of
    `outputs` (latency at `batch`, `rounds` interleaved rounds, one session alive at a time), and
    write to each runtime's path the form fastest on that runtime whose accuracy on the calibration
    images (against their labels) is within `max_drop` points of fp32's (AUTO_DROP_POINTS when
    None); with none within, the most accurate. The runtimes may choose different forms: their
    kernels differ (on the 2-core development machine onnxruntime's int8 convolution of a 1-channel
    image takes 3-4x OpenVINO's time, so the stem is float32 for one and int8 for the other). Forms
    within TIE of the fastest count as equally fast, and the first listed wins (stem int8 before fp32,
    u8 before s8, per-channel before per-tensor), so noise does not flip the choice. Where a path of
    `outputs` is an OpenVINO IR (.xml), every choice is left open and NNCF is installed, NNCF's own
    quantization of the model (`NNCF_FORM`) is one more candidate there (on OpenVINO alone); an ONNX
    form chosen for an .xml path is written as its IR. With every choice open and `write_layers` (a
    function writing that QDQ file to a path), `LAYERS_FORM` is one more candidate on every runtime.

    Little is measured that would not change the choice (at 224 px each pass is a second or more): a
    form over SLOW times the fastest in the first round is not timed again on that runtime (its
    `latency_rounds` says how often it was; it is chosen only if every faster form fails the drop,
    then on that one timing), and accuracy is scored from the fastest form on, up to
    the fastest within the drop and those within TIE of it (the others' `calibration_accuracy`,
    `drop_points` and `within_drop` are None). Each latency is `runs` passes, fewer where they would
    take more than `budget_s` seconds, at least 3.
    """
    if not calibration:
        raise CompressorError("int8 quantization needs at least one calibration batch")
    check_calibration_method(method)
    xs = [x for x, _ in calibration]
    labels = np.concatenate([y for _, y in calibration])
    runtimes = list(outputs)
    first = Path(outputs[runtimes[0]])
    with tempfile.TemporaryDirectory(dir=first.parent) as tmp:
        tmp = Path(tmp)
        pre = preprocess(fp32_path, tmp)
        stems = [stem] if stem != "auto" else (["int8", "fp32"] if has_int8_stem_choice(pre) else ["int8"])
        acts = [activations] if activations != "auto" else ["u8", "s8"]
        chans = [per_channel] if per_channel is not None else [True, False]
        forms = [Int8Form(s, a, c) for s in stems for a in acts for c in chans]
        all_open = (stem, activations, per_channel) == ("auto", "auto", None)
        forms += [LAYERS_FORM] if all_open and write_layers is not None else []
        with_nncf = nncf_available() and all_open and any(Path(p).suffix == ".xml" for p in outputs.values())
        if len(forms) == 1:
            only = tmp / "candidate0.onnx"
            excluded = _quantize_preprocessed(pre, only, xs, forms[0], method)
            choices = {}
            for rt in runtimes:
                try:
                    session(only, threads, rt)
                except Exception as e:  # noqa: BLE001 - a runtime that cannot compile the form: recorded
                    row = {**asdict(forms[0]), "fp32_nodes": excluded, "error": _refusal(e, only)}
                    choices[rt] = Int8Choice(None, None, excluded, [row], error=row["error"])
                    continue
                write_int8(only, Path(outputs[rt]))
                choices[rt] = Int8Choice(forms[0], Path(outputs[rt]), excluded, [])
            return choices

        def calibration_accuracy(path: Path, runtime: str) -> float:
            sess = session(path, threads, runtime)
            logits = np.concatenate([sess(x) for x in xs])
            return float((logits.argmax(1) == labels).mean())

        def score(row: dict, path: Path, runtime: str, fp32_acc: float) -> bool:
            """Score one candidate on the calibration images into its row; False where it fails to run."""
            try:
                acc = calibration_accuracy(path, runtime)
            except Exception as e:  # noqa: BLE001 - compiled, then failed to run: not a candidate either
                row.update(error=_refusal(e, path), latency_ms=None)
                return False
            drop = round(100 * (fp32_acc - acc), 4)
            row.update(calibration_accuracy=acc, drop_points=drop, within_drop=drop <= limit)
            return True

        paths, excluded = [], []
        n_onnx = len(forms)
        forms += [NNCF_FORM] if with_nncf else []
        n, limit = len(forms), allowed_drop(max_drop)
        steps = n + rounds * n * len(runtimes) + len(runtimes) * (1 + n)  # at most: rounds and scores are skipped
        with progress(f"export: {n} int8 candidates", steps) as bar:
            for i, form in enumerate(forms):
                if form.quantizer == "nncf":
                    paths.append(tmp / f"candidate{i}.xml")
                    quantize_nncf(fp32_path, paths[-1], xs)
                    excluded.append([])
                elif form.quantizer == "layers":
                    paths.append(tmp / f"candidate{i}.onnx")
                    write_layers(paths[-1])
                    excluded.append(float_convs(paths[-1]))
                else:
                    paths.append(tmp / f"candidate{i}.onnx")
                    excluded.append(_quantize_preprocessed(pre, paths[-1], xs, form, method,
                                                           ranges=tmp / f"ranges-{form.stem}.json"))
                bar.advance(1, f"quantized {form.label()}")

            def applies(i: int, rt: str) -> bool:  # an IR candidate is OpenVINO's alone, for its IR output
                return i < n_onnx or (rt == "openvino" and Path(outputs[rt]).suffix == ".xml")

            shape = input_shape_of(fp32_path)
            times = {rt: [[] for _ in forms] for rt in runtimes}
            errors: dict[str, dict[int, str]] = {rt: {} for rt in runtimes}  # forms a runtime cannot compile or run
            for r in range(rounds):
                for i, path in enumerate(paths):
                    for rt in runtimes:
                        timed = [t[0] for t in times[rt] if t]
                        if not applies(i, rt) or i in errors[rt] or (r and times[rt][i][0] > SLOW * min(timed)):
                            continue  # refused, or far slower than the fastest: not timed again on this runtime
                        try:
                            sess = session(path, threads, rt)  # one live session at a time: idle threads spin
                            times[rt][i].append(latency_ms(sess, shape, batch, runs=runs, warmup=2, budget_s=budget_s))
                        except Exception as e:  # noqa: BLE001 - not a candidate on this runtime; never the end of the export
                            errors[rt][i] = _refusal(e, path)
                        sess = None
                        bar.advance(1, f"latency round {r + 1}/{rounds}")
            choices = {}
            for rt in runtimes:
                rows = [{**asdict(form), "calibration_accuracy": None, "drop_points": None, "fp32_nodes": nodes,
                         "latency_ms": float(np.median(t)) if t else None, "latency_rounds": len(t),
                         "within_drop": None, **({"error": errors[rt][i]} if i in errors[rt] else {})}
                        for i, (form, nodes, t) in enumerate(zip(forms, excluded, times[rt]))]
                rows = [row if applies(i, rt) else None for i, row in enumerate(rows)]  # placeholders: indices stay
                fp32_acc = calibration_accuracy(fp32_path, rt)
                bar.advance(1, f"accuracy on {rt}")
                fastest = None  # the fastest form within the drop; forms are scored from the fastest on
                for i in sorted((i for i in range(n) if rows[i] and "error" not in rows[i]),
                                key=lambda i: rows[i]["latency_ms"]):
                    if fastest is not None and rows[i]["latency_ms"] > fastest * (1 + TIE):
                        break  # slower than the fastest form within the drop: never chosen, never scored
                    if not score(rows[i], paths[i], rt, fp32_acc):
                        continue
                    if fastest is None and rows[i]["within_drop"]:
                        fastest = rows[i]["latency_ms"]
                    bar.advance(1, f"accuracy on {rt}")
                ran = [i for i in range(n) if rows[i] and "error" not in rows[i]]
                if not ran:
                    choices[rt] = Int8Choice(None, None, [], [row for row in rows if row], error=rows[0]["error"])
                    continue
                if fastest is not None:  # among forms within TIE of the fastest, the first listed (this close is noise)
                    best = next(i for i in ran if rows[i]["within_drop"] and rows[i]["latency_ms"] <= fastest * (1 + TIE))
                else:  # none within: every form that runs was scored; the most accurate
                    best = max(ran, key=lambda i: rows[i]["calibration_accuracy"])
                rows[best]["chosen"] = True
                write_int8(paths[best], Path(outputs[rt]))
                choices[rt] = Int8Choice(forms[best], Path(outputs[rt]), excluded[best], [row for row in rows if row])
                if forms[best].quantizer == "nncf":  # the QDQ form to ship should NNCF's lose more on the test split
                    qdq = [i for i in sorted(range(n_onnx), key=lambda i: rows[i]["latency_ms"] or float("inf"))
                           if "error" not in rows[i]]
                    for i in qdq:
                        if (rows[i]["calibration_accuracy"] is not None or score(rows[i], paths[i], rt, fp32_acc)) \
                                and rows[i]["within_drop"]:
                            break
                    scored = [i for i in qdq if rows[i].get("calibration_accuracy") is not None]
                    if scored:
                        alt = next((i for i in scored if rows[i]["within_drop"]),
                                   max(scored, key=lambda i: rows[i]["calibration_accuracy"]))
                        out = Path(outputs[rt])
                        fallback = out.with_name(f".{out.stem}.fallback{out.suffix}")
                        write_int8(paths[alt], fallback)
                        choices[rt].fallback, choices[rt].fallback_form = fallback, forms[alt]
            bar.complete("done")
        return choices


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


RUNTIMES = ("onnxruntime", "openvino")
OPENVINO_MISSING = ("OpenVINO is not installed: pip install 'compressor[openvino]' (or pip install openvino), "
                    "or use --runtime onnxruntime")


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def _openvino():
    try:
        import openvino
    except ImportError:
        raise CompressorError(OPENVINO_MISSING) from None
    return openvino


class Session:
    """One loaded model on one runtime: `sess(x)` gives the logits of a float32 N x C x H x W batch."""

    runtime = ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def input_shape(self) -> list[int]:
        """The input's C, H, W (the batch dimension is dynamic)."""
        raise NotImplementedError


class OrtSession(Session):
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(["logits"], {"input": x})[0]

    def input_shape(self) -> list[int]:
        return [int(d) for d in self.sess.get_inputs()[0].shape[1:]]


class OpenVINOSession(Session):
    """OpenVINO's CPU plugin, reading ONNX or its own IR (model.xml + model.bin), latency hint.

    The file keeps its dynamic batch; each batch size seen is compiled once with that static shape
    (as a deployment would: OpenVINO's CPU kernels for a static shape are faster).

    `precision`: the float precision of the layers that are not int8 (INFERENCE_PRECISION_HINT),
    "fp32" unless asked otherwise. Left to itself, OpenVINO runs a float32 model in bfloat16 on a
    CPU with AMX-BF16 or AVX-512-BF16: figures called fp32 would not be float32 there. "bf16" and
    "fp16" are forms of their own (`reduced_float_forms` says which this CPU runs natively)."""

    runtime = "openvino"

    def __init__(self, path: Path, threads: int | None = None, precision: str = "fp32") -> None:
        ov = _openvino()
        self.path = Path(path)
        self.core = ov.Core()
        self.config: dict = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision]}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.model = self.core.read_model(str(path))
        self.shape = [int(d.get_length()) for d in self.model.input(0).get_partial_shape()[1:]]
        self.requests: dict[tuple, object] = {}
        first = self._request((1, *self.shape))  # compile once now: a file OpenVINO cannot compile fails here
        hint = first.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)

    def _request(self, shape: tuple):
        if shape not in self.requests:
            model = self.model.clone()
            model.reshape(list(shape))
            self.requests[shape] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        return self.requests[shape]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        request = self._request(tuple(x.shape))
        request.infer({0: np.ascontiguousarray(x)}, share_inputs=True)  # no copy of the batch: it outlives this synchronous call
        return request.get_output_tensor(0).data.copy()

    def input_shape(self) -> list[int]:
        return self.shape


OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}  # our form names -> INFERENCE_PRECISION_HINT
OPENVINO_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}  # -> what OPTIMIZATION_CAPABILITIES lists for it


def reduced_float_forms(runtime: str) -> list[str]:
    """The reduced float precisions `runtime` runs natively on this CPU, as the runtime reports them:
    OpenVINO's OPTIMIZATION_CAPABILITIES (BF16 with AMX-BF16 or AVX-512-BF16, FP16 with AVX-512-FP16);
    none for onnxruntime, whose CPU provider has no bf16 or fp16 convolution kernels on x86."""
    if runtime != "openvino" or not openvino_available():
        return []
    caps = set(_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return [form for form, cap in OPENVINO_CAPABILITY.items() if cap in caps]


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
             "amx_bf16")  # the ones that change which kernels the runtimes pick


def _cpuinfo(field: str) -> str | None:
    """The first `field` line of /proc/cpuinfo (None where there is none, e.g. off Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((ln.partition(":")[2].strip() for ln in lines if ln.split(":")[0].strip() == field), None)


def cpu_flags() -> list[str]:
    """This CPU's instruction-set flags that decide the runtimes' kernels (recorded beside latencies;
    what a runtime supports is asked of the runtime, not read from here)."""
    import platform

    flags = _cpuinfo("flags")
    if flags is None:
        return [platform.processor() or platform.machine()]
    return [f for f in CPU_FLAGS if f in set(flags.split())]


def machine_summary() -> str:
    """One line: the CPU's model, its flags that matter to the runtimes, threads, and runtime versions."""
    import os
    import platform

    import onnxruntime

    model = _cpuinfo("model name") or platform.processor() or platform.machine()
    versions = [f"onnxruntime {onnxruntime.__version__}"]
    if openvino_available():
        versions.append(f"OpenVINO {_openvino().__version__.split('-')[0]}")
    return (f"CPU: {model}, {os.cpu_count()} cores; flags: {' '.join(cpu_flags()) or 'none of ' + ' '.join(CPU_FLAGS)}; "
            f"{', '.join(versions)}; torch {torch.__version__}")


def session(path: Path, threads: int | None = None, runtime: str | None = None, precision: str = "fp32") -> Session:
    """Load `path` (.onnx, or OpenVINO's .xml) on `runtime` (default: onnxruntime for .onnx, openvino
    for .xml); `precision`: the float precision OpenVINO runs the float layers in (see OpenVINOSession)."""
    runtime = runtime or ("openvino" if Path(path).suffix == ".xml" else "onnxruntime")
    if runtime not in RUNTIMES:
        raise CompressorError(f"--runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'")
    try:
        if runtime == "onnxruntime":
            if precision != "fp32":
                raise CompressorError(f"onnxruntime runs the file's own precision, not {precision}")
            return OrtSession(Path(path), threads)
        return OpenVINOSession(Path(path), threads, precision)
    except CompressorError:
        raise
    except Exception as e:  # noqa: BLE001 - a file the runtime cannot read (damaged, no .bin beside an .xml)
        raise CompressorError(f"{runtime} cannot load {path}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    """The line of a library's long error that says what is wrong: the first one that is not
    OpenVINO's "Exception from FILE:LINE:" / "Check '...' failed at" location lines."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '"))]
    return (said or lines or [type(e).__name__])[0][:300]


def save_openvino_ir(onnx_path: Path, xml_path: Path) -> None:
    """OpenVINO IR (xml + bin beside it) of an ONNX model; a QDQ model becomes an int8 IR."""
    ov = _openvino()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def predict_batches(sess: Session, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every batch (any runtime's session), with a progress bar named `desc`."""
    outs, labels = [], []
    with progress(desc, len(batches) if hasattr(batches, "__len__") else 0) as bar:
        for x, y in batches:
            outs.append(sess(x.numpy()))
            labels.append(y.numpy())
            bar.advance(1)
    return np.concatenate(outs), np.concatenate(labels)


VERIFY_BUDGET_S = 10.0  # an exported model's latency: 30 passes, fewer where they take longer (224 px, fp32: ~1 s each)


def latency_ms(sess: Session, input_shape: list[int], batch: int = 64, runs: int = 30, warmup: int = 5,
               budget_s: float | None = None) -> float:
    """Median wall time of one forward pass at `batch`, warm-up excluded.

    `budget_s`: at most about that many seconds of timed passes (at least 3), so a large model
    measured many times (the int8 candidates) does not take minutes per measurement."""
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    for _ in range(warmup):
        t0 = time.perf_counter()
        sess(x)
        last = time.perf_counter() - t0
    if budget_s is not None and warmup:
        runs = max(3, min(runs, int(budget_s / max(last, 1e-9))))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess(x)
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
