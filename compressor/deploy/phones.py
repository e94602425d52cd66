"""The phone targets, written from the PyTorch model and run here by their own runtimes (XNNPACK, the
CPU kernel library they use on phones, runs on x86 as on Arm), so what ships to a phone is measured
before it gets there. ExecuTorch: programs (.pte) lowered to the XNNPACK delegate; int8 by PyTorch's
PT2E flow with XNNPACK's quantizer; run by ExecuTorch's runtime.

The int8 files are calibrated on the same images as the ONNX int8 file. A phone file takes a batch of
one image (a phone classifies one at a time; the runtimes plan their memory for that static shape):
accuracy is measured one image at a time, latency at batch 1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from compressor import CompressorError
from compressor.deploy.runtimes import Session

TARGETS = ("onnx", "executorch")
PHONE_TARGETS = TARGETS[1:]
MODULE = {"executorch": "executorch"}  # what each needs importable (its pip extra has the target's name)
FILES = {"executorch": {"fp32": "model.pte", "int8": "model.int8.pte"}}


def target_available(target: str) -> bool:
    return importlib.util.find_spec(MODULE[target]) is not None


def missing_line(target: str) -> str:
    return (f"--target {target} needs {target} installed: pip install 'compressor[{target}]' "
            f"(or drop {target} from --target)")


def parse_targets(value: str) -> list[str]:
    """`--target onnx,executorch`: the known targets named, onnx always first (every other is
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


def _quantizer(target: str):
    """The target's PT2E quantizer: symmetric int8 weights per output channel, int8 activations per tensor."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def quantize_pt2e(target: str, model: nn.Module, shape: list[int], calibration: list[np.ndarray]):
    """The model in `target`'s int8 scheme by PyTorch's PT2E flow, ranges observed on the calibration
    batches (fed one image at a time: the file's shape); returns (quantized model, quantizer)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = _quantizer(target)
    with _quiet():
        prepared = prepare_pt2e(torch.export.export(model, _example(shape)).module(), quantizer)
    with torch.no_grad():
        for batch in calibration:
            for x in torch.from_numpy(batch).split(1):
                prepared(x)
    with _quiet():
        return convert_pt2e(prepared), quantizer


def write_phone(target: str, model: nn.Module, path: Path, shape: list[int], quantizer=None) -> dict:
    """`model` (in eval mode; for int8 from `quantize_pt2e`) written as `target`'s file at `path`;
    returns how much of it the XNNPACK delegate takes (see `delegation`). `quantizer`: the one
    `quantize_pt2e` used (a converter that needs it to write int8 gets it)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with _quiet(), torch.no_grad():
        edge = to_edge_transform_and_lower(torch.export.export(model, _example(shape)),
                                           partitioner=[XnnpackPartitioner()])
        summary = delegation(edge.exported_program().graph_module)
        Path(path).write_bytes(edge.to_executorch().buffer)
    return summary


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


class ExecuTorchSession(Session):
    """A .pte program run by ExecuTorch's runtime (the C++ runtime a phone runs, with its XNNPACK
    kernels). The program's batch is 1: a larger batch runs one image at a time."""

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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return np.concatenate([self.method.execute([row])[0].numpy() for row in t.split(1)])

    def input_shape(self) -> list[int]:
        return self.shape


def phone_session(target: str, path: Path, threads: int | None, shape: list[int]) -> Session:
    return {"executorch": ExecuTorchSession}[target](path, threads, shape)
