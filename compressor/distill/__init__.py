"""Distillation methods, one per file, each a Distiller returning a dict of named losses."""

from __future__ import annotations

from compressor import CompressorError
from compressor.distill.base import Distiller
from compressor.distill.kd import KD

METHOD_NAMES = ("kd", "mse", "fitnet", "at", "rkd", "vid", "l2tww")
SCHEME_NAMES = ("offline", "online", "self")
METHODS: dict[str, type[Distiller]] = {"kd": KD}
SCHEMES = ("offline",)


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
