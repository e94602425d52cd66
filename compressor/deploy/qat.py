"""Quantization-aware training: BatchNorm folded into its convolution, int8 rounding simulated
exactly where the int8 ONNX file quantizes, and that QDQ file written from the learned ranges.

The graph (one scheme, for every runtime): each convolution and linear layer reads a uint8
per-tensor activation and int8 per-channel symmetric weights and writes a uint8 per-tensor output,
so onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv (QGemm for the
classifier) and OpenVINO into its int8 convolutions; activations, squeeze-and-excitation gates,
additions and pooling stay float32 between them. The simulation is torch's own FakeQuantize
(torch.ao.quantization: moving-average min/max observers, straight-through gradients), and the
file is what torch.onnx makes of it (QuantizeLinear/DequantizeLinear pairs with the same scales and
zero points), so the exported model computes what was trained.

Why not NNCF's or PT2E's QAT: NNCF's PyTorch QAT quantizes only the inputs of convolutions and
keeps BatchNorm apart, a graph onnxruntime runs in float (the measurement is in the commit that
added this module); PT2E moved out of torch into torchao and lowers to Inductor or XNNPACK, not to
a QDQ ONNX graph both runtimes run in int8.

An artifact of `compress quantize` records in model.json (`quantization`) which BatchNorms were
folded into which convolutions and which layers are quantized; `apply_structure` rebuilds that
model (convolutions with their bias, BatchNorms gone, FakeQuantize modules in place) so that its
model.safetensors, which holds the weights and each FakeQuantize's scale and zero point as plain
tensors, loads strictly.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor import CompressorError

SCHEME = "u8 activations per tensor, s8 weights per channel (symmetric), float32 between layers"


def _activation_fq():
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine, reduce_range=False)


def _weight_fq():
    from torch.ao.quantization import FakeQuantize, MovingAveragePerChannelMinMaxObserver

    return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0, reduce_range=False)


class _Quantized:
    """Mixin of QuantConv2d / QuantLinear: fake-quantized input, weights and output. Observers
    (the ranges) update only in training mode; evaluation never moves a range."""

    def _add_quantizers(self) -> None:
        self.input_quant = _activation_fq()
        self.weight_quant = _weight_fq()
        self.output_quant = _activation_fq()

    def quantizers(self):
        return self.input_quant, self.weight_quant, self.output_quant

    def train(self, mode: bool = True):
        super().train(mode)
        for q in self.quantizers():
            q.observer_enabled[0] = int(mode and not getattr(self, "ranges_frozen", False))
        return self


class QuantConv2d(_Quantized, nn.Conv2d):
    def forward(self, x):
        y = self._conv_forward(self.input_quant(x), self.weight_quant(self.weight), self.bias)
        return self.output_quant(y)


class QuantLinear(_Quantized, nn.Linear):
    def forward(self, x):
        return self.output_quant(F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias))


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def conv_batchnorm_pairs(model: nn.Module, input_shape: list[int]) -> list[tuple[str, str]]:
    """(conv, batchnorm) module names where the BatchNorm reads that convolution's output directly
    (found by tensor identity in one forward pass, so any architecture works)."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda mod, i, o: produced.__setitem__(id(o), names[mod])))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, i: pairs.append((produced[id(i[0])], names[mod])) if id(i[0]) in produced else None))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    seen, out = set(), []
    for conv, bn in pairs:  # a BatchNorm called twice, or a conv read by two BatchNorms, is not folded
        if sum(p[1] == bn for p in pairs) == 1 and sum(p[0] == conv for p in pairs) == 1 and bn not in seen:
            out.append((conv, bn))
            seen.add(bn)
    return out


def _without_batchnorm(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of a BatchNorm once folded: nothing, or timm's BatchNormAct2d's dropout and activation."""
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if isinstance(m, nn.Module)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def fold_batchnorms(model: nn.Module, pairs: list[tuple[str, str]], *, values: bool = True) -> None:
    """Fold each BatchNorm (its running statistics and affine) into the convolution before it, which
    gains a bias; the BatchNorm module is replaced by what follows it inside (timm's activation).
    values=False changes only the structure (to load a folded model's weights)."""
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise CompressorError(f"cannot fold {bn_name} into {conv_name}: not a Conv2d followed by a BatchNorm2d")
        with torch.no_grad():
            bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
            if values:
                scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
                shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
                conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
                bias = (bias - bn.running_mean) * scale + shift
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
        _swap(model, bn_name, _without_batchnorm(bn))


def quantizable_layers(model: nn.Module, input_shape: list[int]) -> tuple[list[str], list[str]]:
    """The Conv2d and Linear layers to quantize, and those kept float: the stem convolution when it
    reads the 1-4 channel image (onnxruntime's int8 convolution spends most of its time on im2col
    there; float32 is faster and more accurate)."""
    layers = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    keep_float = [n for n in layers[:1] if isinstance(model.get_submodule(n), nn.Conv2d)
                  and model.get_submodule(n).in_channels == input_shape[0] <= 4]
    return [n for n in layers if n not in keep_float], keep_float


def _twin(m: nn.Module, conv_type: type, linear_type: type) -> nn.Module | None:
    """A layer of `conv_type` (for a Conv2d) or `linear_type` (for a Linear) with `m`'s shape and
    `m`'s own weight and bias (shared, not copied); None for any other module."""
    if isinstance(m, nn.Conv2d):
        twin = conv_type(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         m.bias is not None, m.padding_mode, device=m.weight.device, dtype=m.weight.dtype)
    elif isinstance(m, nn.Linear):
        twin = linear_type(m.in_features, m.out_features, m.bias is not None, device=m.weight.device,
                           dtype=m.weight.dtype)
    else:
        return None
    twin.weight = m.weight
    if m.bias is not None:
        twin.bias = m.bias
    return twin


def insert_quantizers(model: nn.Module, layers: list[str]) -> None:
    """Replace each named Conv2d/Linear with its fake-quantized twin (same parameters, same names)."""
    for name in layers:
        m = model.get_submodule(name)
        q = _twin(m, QuantConv2d, QuantLinear)
        if q is None:
            raise CompressorError(f"cannot quantize {name}: {type(m).__name__} is not a Conv2d or Linear")
        q._add_quantizers()
        q.train(m.training)
        _swap(model, name, q)


def prepare(model: nn.Module, input_shape: list[int]) -> dict[str, Any]:
    """Fold BatchNorms and insert quantizers in place; return the structure model.json records."""
    pairs = conv_batchnorm_pairs(model, input_shape)
    fold_batchnorms(model, pairs)
    layers, kept_float = quantizable_layers(model, input_shape)
    insert_quantizers(model, layers)
    return {"scheme": SCHEME, "folded": [list(p) for p in pairs], "quantized": layers, "float": kept_float}


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> None:
    """Rebuild a quantized artifact's module structure on a freshly built model (no weights)."""
    fold_batchnorms(model, [tuple(p) for p in structure["folded"]], values=False)
    insert_quantizers(model, structure["quantized"])
    freeze_ranges(model)


def learned_layers(model: nn.Module) -> dict[str, _Quantized]:
    """The fake-quantized layers of `model` by module name (their quantizers hold the learned ranges)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _Quantized)}


def quantized_modules(model: nn.Module) -> list[_Quantized]:
    return list(learned_layers(model).values())


def calibrate(model: nn.Module, batches, device) -> None:
    """Initialise every range from the training images (observers on, no gradient, no weight change)."""
    was = model.training
    model.train()  # observers run in training mode; dropout's randomness does not matter without gradients
    with torch.no_grad():
        for x in batches:
            model(x.to(device))
    model.train(was)


def freeze_ranges(model: nn.Module) -> None:
    """No range moves any more, in training mode either (a loaded artifact's ranges are final)."""
    for m in quantized_modules(model):
        m.ranges_frozen = True
        m.train(m.training)


def write_calibrated(model: nn.Module, input_shape: list[int], batches, path) -> None:
    """The post-training form of this scheme (`LAYERS_FORM`) as a QDQ ONNX file at `path`: a copy of
    `model` with BatchNorm folded and quantizers inserted, ranges from `batches` (tensors), no fine-tuning."""
    from compressor.deploy.graph import export_qdq

    twin = copy.deepcopy(model).cpu().eval()
    prepare(twin, input_shape)
    calibrate(twin, batches, "cpu")
    freeze_ranges(twin)
    export_qdq(twin.eval(), path, input_shape)


def float_copy(model: nn.Module) -> nn.Module:
    """A copy of a quantized artifact's model with plain Conv2d/Linear layers (the same parameters,
    BatchNorms still folded) in place of its fake-quantized ones: the float model a graph-capturing
    converter (torch.export) reads, the learned ranges then set on its graph (`learned_layers`)."""
    twin = copy.deepcopy(model)
    for name, q in learned_layers(twin).items():
        plain = _twin(q, nn.Conv2d, nn.Linear)
        plain.train(q.training)
        _swap(twin, name, plain)
    return twin


@contextlib.contextmanager
def float_mode(model: nn.Module):
    """The same weights without the int8 rounding (the float model a quantized artifact came to); a
    model without quantizers, as it is."""
    from torch.ao.quantization import disable_fake_quant, enable_fake_quant

    model.apply(disable_fake_quant)
    try:
        yield model
    finally:
        model.apply(enable_fake_quant)


def ranges(model: nn.Module) -> dict[str, dict]:
    """Each quantized layer's activation ranges (scale, zero point): what metrics.json shows."""
    out = {}
    for name, m in learned_layers(model).items():
        out[name] = {k: [float(q.scale.flatten()[0]), int(q.zero_point.flatten()[0])]
                         for k, q in (("input", m.input_quant), ("output", m.output_quant))}
    return out


class KeepZeros:
    """After every optimizer step, weights that were exactly zero (a sparse model's) are zero again."""

    def __init__(self, model: nn.Module) -> None:
        self.masks = {n: (m.weight != 0) for n, m in model.named_modules()
                      if isinstance(m, (nn.Conv2d, nn.Linear)) and bool((m.weight == 0).any())}
        self.layers = {n: model.get_submodule(n) for n in self.masks}

    def __bool__(self) -> bool:
        return bool(self.masks)

    @torch.no_grad()
    def __call__(self) -> None:
        for n, m in self.layers.items():
            m.weight.mul_(self.masks[n].to(m.weight.device))
