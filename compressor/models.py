"""Model factory: any timm model name, plus small built-in students registered the same way.

A model is described by a spec (the `model.json` of its artifact) and rebuilt from it alone.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compressor import CompressorError
from compressor.deploy.qat import apply_structure

_BUILTIN: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a built-in model factory under its function name (as timm's @register_model)."""
    _BUILTIN[fn.__name__] = fn
    return fn


def list_builtin() -> list[str]:
    return sorted(_BUILTIN)


class ConvNet(nn.Module):
    """Conv blocks (conv3x3 -> BN -> ReLU, then 2x max-pool), then two fully connected layers.

    Exposes timm-style `feature_info` (one entry per block: the output just before it is pooled),
    `forward_features`, `forward_head(pre_logits=...)` and `get_classifier`.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), hidden: int = 256, num_classes: int = 10,
                 in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.num_features = num_classes, hidden
        blocks, c, self.feature_info = [], in_chans, []
        for i, w in enumerate(widths):
            blocks.append(nn.Sequential(nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                        nn.ReLU(inplace=True)))
            self.feature_info.append({"num_chs": w, "reduction": 2 ** i, "module": f"blocks.{i}"})
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(c, hidden)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.blocks) - 1:
                x = self.pool(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act(self.fc1(torch.flatten(self.global_pool(x), 1)))
        return x if pre_logits else self.fc(self.drop(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def convtiny(num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module:
    """Three conv blocks (32, 64, 128 channels) and two FC layers (256 hidden)."""
    return ConvNet((32, 64, 128), 256, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def convverytiny(num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module:
    """ConvTiny with half the widths: (16, 32, 64) channels, 128 hidden."""
    return ConvNet((16, 32, 64), 128, num_classes=num_classes, in_chans=in_chans, **kwargs)


def create_model(name: str, *, num_classes: int, in_chans: int, pretrained: bool = False,
                 **kwargs) -> nn.Module:
    """Build a model by name: a built-in student or any timm model. `None` kwargs are dropped."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name in _BUILTIN:
        if pretrained:
            raise CompressorError(f"built-in model '{name}' has no pretrained weights; drop --pretrained")
        try:
            return _BUILTIN[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
        except TypeError as e:
            raise CompressorError(f"model '{name}' does not accept the arguments {sorted(kwargs)} ({e})") from None
    import timm

    if not timm.is_model(name):
        raise CompressorError(f"unknown model '{name}': not a built-in ({', '.join(list_builtin())}) "
                              "nor a timm model (see timm.list_models())")
    offline = pretrained and not _hub_reachable()
    if offline:
        _force_hub_offline()  # use the local cache if it has the weights; fail at once if not (no retries)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except Exception as e:  # noqa: BLE001
        if offline:
            raise CompressorError(f"could not load pretrained weights for '{name}': the Hugging Face hub is "
                                  "unreachable (offline?) and they are not in the local cache; use --init FILE "
                                  "or drop --pretrained") from None
        if pretrained:
            raise CompressorError(f"could not load pretrained weights for '{name}': "
                                  f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        raise CompressorError(f"could not build timm model '{name}': {e}") from None


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _force_hub_offline() -> None:
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as c

        c.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass


class ModelSpec(BaseModel):
    """model.json: what rebuilds a model (as timm's PretrainedCfg), validated on load."""

    model_config = ConfigDict(extra="forbid")

    architecture: str
    kwargs: dict[str, Any] = {}
    num_classes: int = Field(ge=1)
    input_shape: list[int] = Field(min_length=3, max_length=3)
    mean: list[float]
    std: list[float]
    class_names: list[str] = []
    stage: str = ""
    data: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    structured_pruning: list[list[dict[str, Any]]] = []
    quantization: dict[str, Any] = {}  # compress quantize: folded BatchNorms and quantized layers (compressor.deploy.qat)
    inputs: dict[str, dict[str, str]] = {}  # input artifacts, relative to this one, with their weights' sha256
    lineage: list[dict[str, Any]] = []  # the steps that made this model, first to last (compressor.provenance)

    @classmethod
    def read(cls, obj: dict, source) -> ModelSpec:
        """Validate a model.json's content; every problem is one line naming the field."""
        if not isinstance(obj, dict):
            raise CompressorError(f"{source} is not a model spec (a JSON object)")
        try:
            return cls.model_validate(obj)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'spec'}: "
                                 f"{'unknown field' if err['type'] == 'extra_forbidden' else err['msg']}"
                                 for err in e.errors())
            raise CompressorError(f"{source} is not a valid model spec: {problems}") from None

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


def pretrained_config(name: str):
    """timm's pretrained config of a model name (mean, std, input size, interpolation, crop_pct,
    fixed_input_size), read without the network; None for built-ins and unknown names."""
    if name in _BUILTIN:
        return None
    import timm

    try:
        return timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):
        return None


def size_kwargs(name: str, image_size: int) -> dict:
    """Models built for one input size (ViT, Swin, ...: `fixed_input_size`) are built for the data's
    size instead (`img_size`; timm resamples pretrained position embeddings). Recorded in model.json."""
    cfg = pretrained_config(name)
    if cfg is not None and getattr(cfg, "fixed_input_size", False) and cfg.input_size[-1] != image_size:
        return {"img_size": image_size}
    return {}


def build_from_spec(spec: ModelSpec | dict) -> nn.Module:
    """Rebuild a model from a model.json spec (no weights), replaying any structured pruning and quantization."""
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.read(spec, "model.json")
    model = create_model(spec.architecture, num_classes=spec.num_classes, in_chans=spec.input_shape[0],
                         **spec.kwargs)
    if spec.structured_pruning:
        for plan in spec.structured_pruning:
            remove_channels(model, spec.input_shape, plan)
    if spec.quantization:

        apply_structure(model, spec.quantization)
    return model


def stage_layers(model: nn.Module) -> list[str]:
    """The output of each stage just before a spatial downsampling (timm feature_info)."""
    return [i["module"] for i in feature_info(model)]


def feature_info(model: nn.Module) -> list[dict]:
    """timm-style feature metadata: one dict per stage with num_chs, reduction and module name."""
    info = getattr(model, "feature_info", None)
    if info is None:
        raise CompressorError(f"{type(model).__name__} has no feature_info; name its layers explicitly")
    return [dict(i) for i in info]  # timm's FeatureInfo iterates as dicts too


def classifier_name(model: nn.Module) -> str | None:
    """The module name of the classification head (timm's default_cfg 'classifier', or 'fc')."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier")
    if isinstance(name, (list, tuple)):
        name = name[0]
    if name:
        return name
    return "fc" if hasattr(model, "fc") else None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def remove_channels(model: nn.Module, input_shape: list[int], plan: list[dict]) -> None:
    """Apply a structured-pruning plan [{"layer": conv name, "removed": [channel idx, ...]}] in order.

    The plan is what model.json records, so a pruned architecture is rebuilt by replaying it on
    the original one.
    """
    import torch_pruning as tp

    modules = dict(model.named_modules())
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    for step in plan:
        if step["layer"] not in modules:
            raise CompressorError(f"pruning plan names layer {step['layer']}, which the model does not have")
        if not step["removed"]:
            continue
        group = dg.get_pruning_group(modules[step["layer"]], tp.prune_conv_out_channels, idxs=list(step["removed"]))
        if not dg.check_pruning_group(group):
            raise CompressorError(f"cannot remove {len(step['removed'])} channels of {step['layer']}")
        group.prune()


def set_trainable(model: torch.nn.Module, pattern: str | None) -> int:
    """Only parameters whose names match `pattern` (re.search) train; the classifier always trains."""
    if pattern is None:
        return sum(p.numel() for p in model.parameters())
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise CompressorError(f"--trainable '{pattern}' is not a valid regular expression ({e})") from None
    head = classifier_name(model) or ""
    matched = 0
    for name, p in model.named_parameters():
        on = bool(rx.search(name)) or (head and name.startswith(head + "."))
        p.requires_grad_(on)
        matched += bool(rx.search(name))
    if not matched:
        some = ", ".join(n for n, _ in list(model.named_parameters())[:3])
        raise CompressorError(f"--trainable '{pattern}' matches no parameter (names look like {some})")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
