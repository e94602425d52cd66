"""The runtimes a model is measured on (onnxruntime, OpenVINO): sessions, the float precisions a
CPU runs natively, the CPU's flags, prediction and latency."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from compressor import CompressorError
from compressor.console import progress
from compressor.deploy.graph import error_line, export_onnx

RUNTIMES = ("onnxruntime", "openvino")
OPENVINO_MISSING = ("OpenVINO is not installed: pip install 'compressor[openvino]' (or pip install openvino), "
                    "or use --runtime onnxruntime")


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def openvino_module():
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
    (as a deployment would: OpenVINO's CPU kernels for a static shape are faster). `static=False`
    compiles the file as read, its batch dynamic, as `core.compile_model(path)` does: OpenVINO runs
    other kernels then, and on some int8 files computes batch 1 wrongly that way (NNCF's int8
    EfficientNet-B0: chance accuracy at batch 1 dynamic, 0.68 static), so a file is checked both ways.

    `precision`: the float precision of the layers that are not int8 (INFERENCE_PRECISION_HINT),
    "fp32" unless asked otherwise. Left to itself, OpenVINO runs a float32 model in bfloat16 on a
    CPU with AMX-BF16 or AVX-512-BF16: figures called fp32 would not be float32 there. "bf16" and
    "fp16" are forms of their own (`reduced_float_forms` says which this CPU runs natively)."""

    runtime = "openvino"

    def __init__(self, path: Path, threads: int | None = None, precision: str = "fp32", static: bool = True) -> None:
        ov = openvino_module()
        self.path = Path(path)
        self.core = ov.Core()
        self.config: dict = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision]}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.model = self.core.read_model(str(path))
        self.shape = [int(d.get_length()) for d in self.model.input(0).get_partial_shape()[1:]]
        self.static = static
        self.requests: dict[tuple, object] = {}
        first = self._request((1, *self.shape))  # compile once now: a file OpenVINO cannot compile fails here
        hint = first.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)

    def _request(self, shape: tuple):
        key = shape if self.static else None  # not static: one compiled model, its batch dynamic, for every size
        if key not in self.requests:
            model = self.model
            if self.static:
                model = self.model.clone()
                model.reshape(list(shape))
            self.requests[key] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        return self.requests[key]

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
    caps = set(openvino_module().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
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
    from importlib import metadata

    import onnxruntime

    model = _cpuinfo("model name") or platform.processor() or platform.machine()
    versions = [f"onnxruntime {onnxruntime.__version__}"]
    if openvino_available():
        versions.append(f"OpenVINO {openvino_module().__version__.split('-')[0]}")
    for name, dist in (("ExecuTorch", "executorch"), ("LiteRT", "ai-edge-litert")):  # the phone runtimes, where installed
        try:
            versions.append(f"{name} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return (f"CPU: {model}, {os.cpu_count()} cores; flags: {' '.join(cpu_flags()) or 'none of ' + ' '.join(CPU_FLAGS)}; "
            f"{', '.join(versions)}; torch {torch.__version__}")


def session(path: Path, threads: int | None = None, runtime: str | None = None, precision: str = "fp32",
            static: bool = True) -> Session:
    """Load `path` (.onnx, or OpenVINO's .xml) on `runtime` (default: onnxruntime for .onnx, openvino
    for .xml); `precision`: the float precision OpenVINO runs the float layers in; `static`: OpenVINO
    compiles each batch size with a static shape, else the file as read (see OpenVINOSession);
    onnxruntime always runs the file as read."""
    runtime = runtime or ("openvino" if Path(path).suffix == ".xml" else "onnxruntime")
    if runtime not in RUNTIMES:
        raise CompressorError(f"--runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'")
    try:
        if runtime == "onnxruntime":
            if precision != "fp32":
                raise CompressorError(f"onnxruntime runs the file's own precision, not {precision}")
            return OrtSession(Path(path), threads)
        return OpenVINOSession(Path(path), threads, precision, static)
    except CompressorError:
        raise
    except Exception as e:  # noqa: BLE001 - a file the runtime cannot read (damaged, no .bin beside an .xml)
        raise CompressorError(f"{runtime} cannot load {path}: {error_line(e)}") from None


def save_openvino_ir(onnx_path: Path, xml_path: Path) -> None:
    """OpenVINO IR (xml + bin beside it) of an ONNX model; a QDQ model becomes an int8 IR."""
    ov = openvino_module()
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
    return float(np.median(pass_times(sess, input_shape, batch, runs, warmup, budget_s)))


def interleaved_ms(openers: list[Callable[[], Session]], input_shape: list[int], batch: int = 64, rounds: int = 5,
                   runs: int = 30, budget_s: float | None = None) -> list[list[float]]:
    """Each session's latency (`latency_ms` at `batch`) in each of `rounds` rounds, every session
    opened (`openers`) and timed in turn in each round, one alive at a time (another's idle threads
    spin and slow it): a drift of a shared machine's speed moves them all alike."""
    times: list[list[float]] = [[] for _ in openers]
    for _ in range(rounds):
        for i, opener in enumerate(openers):
            sess = opener()
            times[i].append(latency_ms(sess, input_shape, batch, runs=runs, budget_s=budget_s))
            sess = None
    return times


FAST_QUANTILE = 0.1  # of a file's passes: how fast it runs when no neighbour's burst slows it (`fast_ms`)


def fast_ms(passes: list[np.ndarray]) -> float:
    """The FAST_QUANTILE of passes (ms) pooled over rounds: what compares files on a shared machine. A
    neighbour's burst slows some passes of one file and not another's; the median ratio of a few rounds
    then moves by +-20 % on a 2-core cloud VM, the ratio of this quantile by 2-5 %."""
    return float(np.quantile(np.concatenate(passes), FAST_QUANTILE))


def pass_times(sess: Session, input_shape: list[int], batch: int = 64, runs: int = 30, warmup: int = 5,
               budget_s: float | None = None) -> np.ndarray:
    """The wall time (ms) of each of `runs` forward passes at `batch`, after `warmup` (see `latency_ms`)."""
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
    return np.array(times) * 1000


def onnx_latency(model: nn.Module, input_shape: list[int], workdir: Path, batch: int = 64) -> float:
    """fp32 onnxruntime latency (ms) of a PyTorch model at `batch`, through a temporary export."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "probe.onnx"
        export_onnx(model, path, input_shape)
        return latency_ms(session(path), input_shape, batch)
