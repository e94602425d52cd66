"""The phone targets, written from the PyTorch model and run here by their own runtimes (XNNPACK, the
CPU kernel library both use on phones, runs on x86 as on Arm), so what ships to a phone is measured
before it gets there:

- ExecuTorch: programs (.pte) lowered to the XNNPACK delegate; int8 by PyTorch's PT2E flow with
  XNNPACK's quantizer; run by ExecuTorch's runtime;
- LiteRT (formerly TensorFlow Lite): .tflite files converted by litert-torch; int8 full-integer (int8
  input and output too) by PT2E with litert-torch's quantizer; run by LiteRT's interpreter with its
  XNNPACK delegate.

The int8 files are calibrated on the same images as the ONNX int8 file. A phone file takes a batch of
one image (a phone classifies one at a time; the runtimes plan their memory for that static shape):
accuracy is measured one image at a time, latency at batch 1.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from compressor import CompressorError
from compressor.deploy import qat
from compressor.deploy.runtimes import Session

TARGETS = ("onnx", "executorch", "litert")
PHONE_TARGETS = TARGETS[1:]
MODULE = {"executorch": "executorch", "litert": "litert_torch"}  # what each needs importable; its pip extra
FILES = {"executorch": {"fp32": "model.pte", "int8": "model.int8.pte"},
         "litert": {"fp32": "model.tflite", "int8": "model.int8.tflite"}}
TARGET_OF_SUFFIX = {Path(files["fp32"]).suffix: target for target, files in FILES.items()}  # .pte, .tflite


def target_available(target: str) -> bool:
    return importlib.util.find_spec(MODULE[target]) is not None


def missing_line(target: str) -> str:
    return (f"--target {target} needs {target} installed: pip install 'compressor[{target}]' "
            f"(or drop {target} from --target)")


def parse_targets(value: str) -> list[str]:
    """`--target onnx,executorch,litert`: the known targets named, onnx always first (every other is
    measured beside it); one line for a name that is none of them or a target not installed."""
    names = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise CompressorError(f"--target takes a comma-separated list of {', '.join(TARGETS)}; got '{value}'")
    for t in names:
        if t != "onnx" and not target_available(t):
            raise CompressorError(missing_line(t))
    return ["onnx"] + [t for t in PHONE_TARGETS if t in names]


@contextlib.contextmanager
def _quiet():
    """The converters and runtimes print progress and log lines (Python and C++) to stdout and stderr;
    stdout belongs to --json: both kept off the console while they work."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(io.StringIO()):
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _example(shape: list[int]) -> tuple[torch.Tensor]:
    return (torch.zeros(1, *shape),)


GATES = ("SqueezeExcite", "SEModule", "EffectiveSEModule", "SqueezeExcitation")  # timm's and torchvision's


def gate_types(model: nn.Module) -> tuple[type, ...]:
    """The squeeze-and-excitation gate modules of `model` (MobileNetV3's, EfficientNet's): the layers
    post-training int8 hurts most there, left in float32 by the int8 files' second form."""
    return tuple(sorted({type(m) for m in model.modules() if type(m).__name__ in GATES}, key=lambda t: t.__name__))


def _quantizer(target: str, float_types: tuple[type, ...] = ()):
    """The target's PT2E quantizer: symmetric int8 weights per output channel, int8 activations per
    tensor; the modules of `float_types` left in float32."""
    if target == "executorch":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                              get_symmetric_quantization_config)

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    else:
        from litert_torch.quantize import pt2e_quantizer

        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    for t in float_types:
        quantizer.set_module_type(t, None)  # both quantizers leave a module type set to None unannotated
    return quantizer


def quantize_pt2e(target: str, model: nn.Module, shape: list[int], calibration: list[np.ndarray],
                  float_types: tuple[type, ...] = ()):
    """The model in `target`'s int8 scheme by PyTorch's PT2E flow, ranges observed on the calibration
    batches (fed one image at a time: the file's shape), the modules of `float_types` left in float32;
    returns (quantized model, quantizer)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = _quantizer(target, float_types)
    with _quiet():
        graph = torch.export.export(model, _example(shape)).module()
        if target == "litert":
            _one_partition_per_call(graph)
        prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            for x in torch.from_numpy(batch).split(1):
                prepared(x)
    with _quiet():  # litert-torch's converter folds the quantize ops itself
        converted = convert_pt2e(prepared, **({"fold_quantize": False} if target == "litert" else {}))
    return move_exported_model_to_eval(converted), quantizer


LAYER_OPS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def _layer_name(node) -> str | None:
    """The module a graph node was traced from (its innermost nn_module_stack entry), without any `@N`."""
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0].split("@")[0] if stack else None


def _learned_quantizer(layers: dict):
    """A PT2E quantizer that quantizes exactly the layers `compress quantize` trained, with the ranges
    it learned (no observer runs): each convolution's and linear layer's input and output per tensor
    (the trained uint8 grid as int8: the same scale, the zero point minus 128), its weights per output
    channel, symmetric, on the trained scales (-128..127, as trained); everything between stays float32,
    as in training. Where one learned layer reads another's output directly, that tensor is quantized
    once, on the writer's output range (training rounded it twice, to both ranges, which observed the
    same tensor; XNNPACK's partitioner cannot lower a requantization between two int8 layers)."""
    from torchao.quantization.pt2e.observer import ObserverBase
    from torchao.quantization.pt2e.quantizer import (FixedQParamsQuantizationSpec, QuantizationAnnotation,
                                                     QuantizationSpec, Quantizer)

    class LearnedWeights(ObserverBase):
        """Per-channel weight scales as learned (calculate_qparams returns them; it observes nothing)."""

        def __init__(self, scale, dtype, quant_min, quant_max, qscheme, ch_axis=0, **_):
            super().__init__(dtype=dtype)
            self.quant_min, self.quant_max, self.qscheme, self.ch_axis = quant_min, quant_max, qscheme, ch_axis
            self.register_buffer("scale", scale.detach().clone().float())

        def forward(self, x):
            return x

        def calculate_qparams(self):
            return self.scale, torch.zeros_like(self.scale, dtype=torch.int32)

    def activations(fq):
        return FixedQParamsQuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127,
                                            qscheme=torch.per_tensor_affine, scale=float(fq.scale),
                                            zero_point=int(fq.zero_point) - 128)

    def weights(fq):
        return QuantizationSpec(dtype=torch.int8, quant_min=fq.quant_min, quant_max=fq.quant_max,
                                qscheme=torch.per_channel_symmetric, ch_axis=0,
                                observer_or_fake_quant_ctr=LearnedWeights.with_args(scale=fq.scale))

    def learned(node):
        return layers.get(_layer_name(node)) if node.op == "call_function" and node.target in LAYER_OPS else None

    class Learned(Quantizer):
        def annotate(self, gm):
            for node in gm.graph.nodes:
                layer = learned(node)
                if layer is None:
                    continue
                source = learned(node.args[0])  # another learned layer's output, read directly
                read = source.output_quant if source is not None else layer.input_quant
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: activations(read), node.args[1]: weights(layer.weight_quant)},
                    output_qspec=activations(layer.output_quant), _annotated=True)
            return gm

        def validate(self, gm) -> None:
            pass

    return Learned()


def quantize_learned(target: str, model: nn.Module, shape: list[int]):
    """A `compress quantize` artifact's model (fake-quantized) as `target`'s int8 program by PT2E, its
    ranges the learned ones (`_learned_quantizer`; no calibration); returns (quantized model, the
    target's quantizer: what litert-torch's converter reads its scheme from)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with _quiet():
        graph = torch.export.export(qat.float_copy(model).eval(), _example(shape)).module()
        prepared = prepare_pt2e(graph, _learned_quantizer(qat.learned_layers(model)))
        converted = convert_pt2e(prepared, **({"fold_quantize": False} if target == "litert" else {}))
    return move_exported_model_to_eval(converted), _quantizer(target)


def _one_partition_per_call(graph) -> None:
    """Name each call of a module called more than once (ConvNet's one MaxPool2d after every block) as
    its own source, as torch.export's `@N` keys do: litert-torch's quantizer annotates a pooling
    "partition" as one call, and with every call of the module in one partition it wires one call's
    observer to another's input (prepare_pt2e then fails: "'relu_1' not in obs_or_fq_map")."""
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            key, (fqn, cls) = list(stack.items())[-1]
            if "@" in key:
                stack[key] = (f"{fqn}@{key.rsplit('@', 1)[1]}", cls)


def write_phone(target: str, model: nn.Module, path: Path, shape: list[int], quantizer=None) -> dict:
    """`model` (in eval mode; from `quantize_pt2e` with its `quantizer` for int8) written as `target`'s
    file at `path`; returns how much of it the XNNPACK delegate takes (see `delegation`)."""
    with _quiet(), torch.no_grad():
        if target == "executorch":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower

            edge = to_edge_transform_and_lower(torch.export.export(model, _example(shape)),
                                               partitioner=[XnnpackPartitioner()])
            summary = delegation(edge.exported_program().graph_module)
            Path(path).write_bytes(edge.to_executorch().buffer)
            return summary
        import litert_torch

        kw = {}
        if quantizer is not None:
            from litert_torch.quantize.quant_config import QuantConfig

            kw["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
        litert_torch.convert(model, _example(shape), **kw).export(str(path))
    return litert_delegation(Path(path))


def delegation(graph_module) -> dict:
    """What XNNPACK took of a lowered ExecuTorch graph: delegated and non-delegated operator calls in
    all, how many XNNPACK partitions, per operator type (those left to ExecuTorch's portable kernels
    run slower), and `int8_weight_layers`: the layers whose int8 weights XNNPACK reads (their
    per-channel dequantize delegated with them: XNNPACK fuses it into its int8 convolution or fully
    connected kernel)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    ops = {}
    for row in info.get_operator_delegation_dataframe().to_dict("records"):
        ops[str(row["op_type"])] = {"delegated": int(row["occurrences_in_delegated_graphs"]),
                                    "not_delegated": int(row["occurrences_in_non_delegated_graphs"])}
    int8_weights = ops.get("quantized_decomposed_dequantize_per_channel_default", {}).get("delegated", 0)
    return {"delegated_ops": int(info.num_delegated_nodes), "not_delegated_ops": int(info.num_non_delegated_nodes),
            "partitions": int(info.num_delegated_subgraphs), "int8_weight_layers": int8_weights, "ops": ops}


def delegated_share(d: dict) -> str:
    """"N of M": the operators a delegation summary (`delegation`, `litert_delegation`) says XNNPACK took."""
    return f"{d['delegated_ops']} of {d['delegated_ops'] + d['not_delegated_ops']}"


WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _interpreter(path: Path, threads: int | None):
    """LiteRT's interpreter on `path` with its default delegate (XNNPACK), tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
        it = Interpreter(model_path=str(path), num_threads=threads or None)
        it.allocate_tensors()
    return it


def litert_delegation(path: Path) -> dict:
    """What LiteRT's XNNPACK delegate takes of a .tflite file: its operators, those the delegate does
    not take (left to LiteRT's own kernels), the delegate's partitions, per operator type, and
    `int8_weight_layers`: the convolutions and fully connected layers whose weights are int8. The
    interpreter lists the file's operators and one DELEGATE node per partition; a partition's
    operators are those between its node's inputs and outputs."""
    it = _interpreter(path, 1)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    file_ops = [i for i, op in enumerate(ops) if op["op_name"] != "DELEGATE"]
    producer = {t: i for i in file_ops for t in ops[i]["outputs"]}
    delegated: set[int] = set()
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    for node in partitions:
        inputs, todo = set(node["inputs"]), list(node["outputs"])
        while todo:
            t = todo.pop()
            if t in inputs or t not in producer or producer[t] in delegated:
                continue
            delegated.add(producer[t])
            todo.extend(ops[producer[t]]["inputs"])
    counts = collections.Counter(ops[i]["op_name"] for i in file_ops)
    kept = collections.Counter(ops[i]["op_name"] for i in file_ops if i not in delegated)
    int8_weights = sum(ops[i]["op_name"] in WEIGHTED_OPS and len(ops[i]["inputs"]) > 1
                       and tensors[ops[i]["inputs"][1]]["dtype"] == np.int8 for i in file_ops)
    return {"delegated_ops": len(delegated), "not_delegated_ops": len(file_ops) - len(delegated),
            "partitions": len(partitions), "int8_weight_layers": int(int8_weights),
            "ops": {name: {"delegated": n - kept[name], "not_delegated": kept[name]} for name, n in sorted(counts.items())}}


def set_threads(threads: int | None) -> None:
    """ExecuTorch's thread pool (XNNPACK's threads) at `threads`, where this build lets it be set."""
    if not threads:
        return
    from executorch.extension.pybindings import portable_lib

    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if reset is not None:
        reset(int(threads))


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class _OneImageSession(Session):
    """A phone file, whose batch is 1: a larger batch runs one image at a time through `_run`."""

    shape: list[int]

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate([self._run(x[i:i + 1]) for i in range(len(x))])

    def input_shape(self) -> list[int]:
        return self.shape


class ExecuTorchSession(_OneImageSession):
    """A .pte program run by ExecuTorch's runtime (the C++ runtime a phone runs, with its XNNPACK
    kernels)."""

    runtime = "executorch"

    def __init__(self, path: Path, threads: int | None = None, shape: list[int] | None = None) -> None:
        from executorch.runtime import Runtime

        self.path = Path(path)
        try:
            with _quiet():
                set_threads(threads)
                self.method = Runtime.get().load_program(self.path).load_method("forward")
        except Exception as e:  # noqa: BLE001 - a file the runtime cannot read: one line
            raise CompressorError(f"executorch cannot load {path}: {_first_line(e)}") from None
        self.shape = list(shape) if shape else list(self.method.metadata.input_tensor_meta(0).sizes()[1:])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.method.execute([torch.from_numpy(x)])[0].numpy()


class LiteRTSession(_OneImageSession):
    """A .tflite file run by LiteRT's interpreter with its XNNPACK delegate, `threads` threads. A
    full-integer file's int8 input is quantized and its int8 output dequantized with the file's own
    scale and zero point (what an app does around it)."""

    runtime = "litert"

    def __init__(self, path: Path, threads: int | None = None, shape: list[int] | None = None) -> None:
        self.path = Path(path)
        try:
            self.it = _interpreter(self.path, threads)
        except Exception as e:  # noqa: BLE001 - a file the interpreter cannot read: one line
            raise CompressorError(f"litert cannot load {path}: {_first_line(e)}") from None
        self.inp, self.out = self.it.get_input_details()[0], self.it.get_output_details()[0]
        self.shape = list(shape) if shape else [int(d) for d in self.inp["shape"][1:]]

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.inp["dtype"] == np.int8:
            scale, zero = self.inp["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])
        if self.out["dtype"] == np.int8:
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)


def phone_session(target: str, path: Path, threads: int | None, shape: list[int]) -> Session:
    return (ExecuTorchSession if target == "executorch" else LiteRTSession)(path, threads, shape)
