"""Distillation methods, one per file, each a registered Distiller that owns its whole protocol.

A method file holds its losses' use, its learnable parameters, its phases and any custom step;
`@register_method` puts it in `compressor.distill.registry.METHODS`, from which the CLI choices,
the recipe validation and the docs' method table come. The pure losses live in
`compressor.distill.functional`.
"""

from __future__ import annotations

from compressor.distill.base import Distiller, FeatureDistiller
from compressor.distill.features import parse_layer_pairs
from compressor.distill.registry import METHODS, OPTION_DEFAULTS, SCHEME_NAMES, get_method, resolve_options

# Each method registers itself when imported: this order is the registry's (the CLI's choices, the
# docs' method table, the benchmarks' default order).
# isort: off
from compressor.distill.kd import KD
from compressor.distill.mse import MSE
from compressor.distill.fitnet import FitNet
from compressor.distill.at import AT
from compressor.distill.rkd import RKD
from compressor.distill.vid import VID
from compressor.distill.l2tww import L2TWW
from compressor.distill.dkd import DKD
from compressor.distill.dist import DIST
from compressor.distill.lit import LIT
# isort: on
from compressor.models import stage_layers

METHOD_NAMES = tuple(METHODS)
__all__ = ["AT", "DIST", "DKD", "Distiller", "FeatureDistiller", "FitNet", "KD", "L2TWW", "LIT", "MSE", "RKD", "VID", "METHODS",
           "METHOD_NAMES", "SCHEME_NAMES", "build_distiller", "layer_pairs"]


def build_distiller(method: str, student, teacher, *, input_shape: list[int], options: dict | None = None,
                    explicit: set[str] | frozenset = frozenset(),
                    channels: dict[str, list[int]] | None = None) -> Distiller:
    """Build any registered method the same way, from the shared options (`DistillOptions`).

    `options` may hold temperature, alpha, beta, gamma, layers, pairs, lambdas, hint_epochs and lit_epochs; the method's own
    defaults fill those left None, and one in `explicit` that the method does not read is an error.
    Feature methods get their layer pairs: explicit 'teacher_layer:student_layer,...' (`layers`),
    or each model's stage outputs (timm feature_info) paired by `pairs` (matched or all).
    """
    info = get_method(method)
    kw = resolve_options(method, {**OPTION_DEFAULTS, **(options or {})}, set(explicit))
    layers, mode = kw.pop("layers", None), kw.pop("pairs", "matched")
    if info.feature:
        kw["pairs"] = layer_pairs(method, teacher, student, layers, mode)
        kw["channels"] = channels
    return info.cls(student, teacher, input_shape=input_shape, **kw)


def layer_pairs(method: str, teacher, student, layers: str | None, mode: str) -> list[tuple[str, str]]:
    """The (teacher layer, student layer) pairs a feature method distills: as named by `layers`
    ('t1:s1,t2:s2'), else the models' stage layers paired by the method (`mode`: matched or all)."""
    if layers:
        return parse_layer_pairs(layers)
    return get_method(method).cls.pair_stages(stage_layers(teacher), stage_layers(student), mode)
