"""Distillation methods, one per file, each a Distiller returning a dict of named losses.

The pure losses live in `compressor.distill.functional`.
"""

from __future__ import annotations

from compressor import CompressorError
from compressor.distill.at import AT
from compressor.distill.base import Distiller, FeatureDistiller
from compressor.distill.fitnet import FitNet
from compressor.distill.kd import KD
from compressor.distill.l2tww import L2TWW
from compressor.distill.mse import MSE
from compressor.distill.rkd import RKD
from compressor.distill.vid import VID

METHOD_NAMES = ("kd", "mse", "fitnet", "at", "rkd", "vid", "l2tww")
__all__ = ["AT", "Distiller", "FeatureDistiller", "FitNet", "KD", "L2TWW", "MSE", "RKD", "VID", "METHODS",
           "METHOD_NAMES", "SCHEME_NAMES", "build_distiller", "get_method", "check_scheme"]
SCHEME_NAMES = ("offline", "online", "self")
METHODS: dict[str, type[Distiller]] = {"kd": KD, "mse": MSE, "fitnet": FitNet, "at": AT, "rkd": RKD, "vid": VID,
                                      "l2tww": L2TWW}
SCHEMES = ("offline", "online", "self")


def get_method(name: str) -> type[Distiller]:
    if name not in METHOD_NAMES:
        raise CompressorError(f"unknown method '{name}'; choose one of {', '.join(METHOD_NAMES)}")
    if name not in METHODS:
        raise CompressorError(f"method '{name}' is not implemented yet; available now: {', '.join(METHODS)}")
    return METHODS[name]


def check_scheme(name: str) -> None:
    if name not in SCHEME_NAMES:
        raise CompressorError(f"unknown scheme '{name}'; choose one of {', '.join(SCHEME_NAMES)}")
    if name not in SCHEMES:
        raise CompressorError(f"scheme '{name}' is not implemented yet; available now: {', '.join(SCHEMES)}")


def build_distiller(method: str, student, teacher, *, input_shape: list[int], temperature: float = 4.0,
                    alpha: float = 0.5, beta: float | None = None, layers: str | None = None, pairs: str = "matched",
                    channels: dict[str, list[int]] | None = None) -> Distiller:
    """Build any method the same way: feature methods get their layer pairs and channel subsets.

    Layer pairs: explicit 'teacher_layer:student_layer,...' (`layers`), or each model's stage
    outputs (timm feature_info) paired by `pairs` (matched or all).
    """
    from compressor.distill.features import pair_layers, parse_layer_pairs
    from compressor.models import stage_layers

    cls = get_method(method)
    kw = {"temperature": temperature, "alpha": alpha, "beta": beta, "input_shape": input_shape}
    if issubclass(cls, FeatureDistiller):
        kw["pairs"] = parse_layer_pairs(layers) if layers else pair_layers(stage_layers(teacher), stage_layers(student),
                                                                           pairs)
        kw["channels"] = channels
    return cls(student, teacher, **kw)
