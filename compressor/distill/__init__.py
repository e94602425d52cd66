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
