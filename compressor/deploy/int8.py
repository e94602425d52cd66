"""int8 forms and how each is made: calibration, onnxruntime's static QDQ quantization in a given
form (stem, activation type, weight scales), and NNCF's quantization for OpenVINO."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressor import CompressorError
from compressor.deploy.graph import fp32_stem, model_files
from compressor.deploy.runtimes import openvino_available, openvino_module, save_openvino_ir


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


@dataclass(frozen=True)
class Int8Form:
    """How a model is quantized: these choices decide the int8 model's speed on a given CPU and runtime.

    quantizer: onnxruntime's quantize_static (a QDQ ONNX file, for every runtime), "nncf":
    OpenVINO's own post-training quantizer (an IR, for OpenVINO alone; it places the quantizers where
    OpenVINO's CPU kernels fuse them, and chooses the other three itself: they are None), or
    "quantize": the scheme `compress quantize` trains (compressor.deploy.qat), its ranges learned, or
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

    ov = openvino_module()
    import nncf

    nncf.set_log_level(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # NNCF's progress bars go to stdout, which belongs to --json
        model = ov.convert_model(str(fp32_path))
        data = nncf.Dataset(calibration)
        quantized = nncf.quantize(model, data, preset=nncf.QuantizationPreset.PERFORMANCE,
                                  subset_size=sum(len(x) for x in calibration))
        ov.save_model(quantized, str(xml_path), compress_to_fp16=False)


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


def quantize_preprocessed(pre: Path, int8_path: Path, calibration: list[np.ndarray], form: Int8Form,
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
            cache = {"calibration_cache_path": str(ranges)} if ranges is not None and has_calibration_cache() else {}
            quantize_static(str(src), str(int8_path), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=form.per_channel,
                            activation_type=QuantType.QUInt8 if form.activations == "u8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calibrate, nodes_to_exclude=excluded,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True}, **cache)
    import onnx

    onnx.checker.check_model(str(int8_path), full_check=True)
    return excluded


def has_calibration_cache() -> bool:
    """Whether this onnxruntime's quantize_static takes calibration_cache_path (recent releases do)."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters
