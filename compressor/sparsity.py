"""Pruning: magnitude masks (one-shot or gradual, global or per layer) kept at exactly zero through
fine-tuning, and structured channel removal through torch-pruning's dependency graph."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from compressor import CompressorError
from compressor.models import classifier_name
from compressor.taps import probe_shapes


def prunable_layers(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """Conv and linear layers by module name (their `.weight` is what gets pruned)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in exclude}


def default_exclusions(model: nn.Module) -> tuple[str, ...]:
    """The first convolution and the classifier: small, and the most sensitive to pruning."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    head = classifier_name(model)
    return tuple(n for n in names if n in (first_conv, head))


def magnitude_masks(layers: dict[str, nn.Module], sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Masks that zero the `sparsity` fraction of smallest |w|: one threshold across layers
    (global) or the same fraction in each layer (layer). Ties at the threshold are pruned too,
    so the measured sparsity is never below the target."""
    if not 0.0 <= sparsity < 1.0:
        raise CompressorError(f"sparsity must be in [0, 1), got {sparsity}")
    if not layers:
        raise CompressorError("the model has no conv or linear layers to prune")
    if scope == "layer":
        return {n: _mask(m.weight.detach().abs(), sparsity) for n, m in layers.items()}
    if scope != "global":
        raise CompressorError(f"--scope must be global or layer, got '{scope}'")
    scores = torch.cat([m.weight.detach().abs().flatten().cpu() for m in layers.values()])
    k = math.ceil(sparsity * scores.numel())
    if k == 0:
        return {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in layers.items()}
    threshold = torch.kthvalue(scores, k).values
    return {n: m.weight.detach().abs() > threshold.to(m.weight.device) for n, m in layers.items()}


def _mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = math.ceil(sparsity * scores.numel())
    if k == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    return scores > torch.kthvalue(scores.flatten().cpu(), k).values.to(scores.device)


def cubic_sparsity(step: int, total_steps: int, target: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - t / n)^3, rising from s_i to s_f over n
    steps, then holding at s_f."""
    if total_steps <= 0:
        return target
    frac = min(max(step / total_steps, 0.0), 1.0)
    return target + (initial - target) * (1.0 - frac) ** 3


@torch.no_grad()
def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    for name, m in layers.items():
        m.weight.mul_(masks[name])


def measured_sparsity(state: dict[str, torch.Tensor], layer_names: list[str]) -> tuple[float, dict[str, float]]:
    """Fraction of exact zeros in the weights of the named layers: overall and per layer."""
    zeros = total = 0
    per_layer = {}
    for name in layer_names:
        w = state[f"{name}.weight"]
        z = int((w == 0).sum())
        per_layer[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    return zeros / max(total, 1), per_layer


class GradualMasker:
    """Re-computes masks on the cubic schedule during fine-tuning; applies them after every step."""

    def __init__(self, layers: dict[str, nn.Module], target: float, total_steps: int, scope: str = "global",
                 schedule: str = "gradual", updates: int = 20) -> None:
        if schedule not in ("oneshot", "gradual"):
            raise CompressorError(f"--schedule must be oneshot or gradual, got '{schedule}'")
        self.layers, self.target, self.scope, self.schedule = layers, target, scope, schedule
        self.ramp = max(1, int(total_steps * 0.75)) if schedule == "gradual" else 0  # hold for the last quarter
        self.every = max(1, self.ramp // updates) if self.ramp else 1
        self.step = 0
        self.masks = magnitude_masks(layers, self.current(), scope)
        apply_masks(layers, self.masks)

    def current(self) -> float:
        return self.target if self.schedule == "oneshot" else cubic_sparsity(self.step, self.ramp, self.target)

    def __call__(self) -> None:
        self.step += 1
        if self.schedule == "gradual" and self.step <= self.ramp and self.step % self.every == 0:
            self.masks = magnitude_masks(self.layers, self.current(), self.scope)
        apply_masks(self.layers, self.masks)

    def state_dict(self) -> dict:
        """What a resumed fine-tuning needs to continue the schedule exactly (see compressor.training.checkpoint)."""
        return {"step": self.step, "masks": dict(self.masks)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.masks = state["step"], dict(state["masks"])

    def finish(self) -> None:
        """Make sure the final masks are at the target (even if fine-tuning had no steps)."""
        self.masks = magnitude_masks(self.layers, self.target, self.scope)
        apply_masks(self.layers, self.masks)


# ---------------------------------------------------------------------------------------------
# Structured pruning: remove whole output channels of convolutions, with everything coupled to them


def channel_groups(model: nn.Module, input_shape: list[int], exclude: tuple[str, ...] = ()):
    """torch-pruning's dependency graph and the conv layers whose output channels can be removed."""
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    head = classifier_name(model)
    ignored = [m for n, m in model.named_modules() if n == head]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    roots = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        if isinstance(root, nn.Conv2d) and names.get(root) not in exclude:
            roots.append(names[root])
    return dg, roots


def conv_positions(model: nn.Module, input_shape: list[int]) -> dict[nn.Module, int]:
    """Each convolution's output positions (H x W) for one input of `input_shape`."""
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    return {modules[n]: s[-2] * s[-1] for n, s in probe_shapes(model, convs, input_shape).items()}


def groups_by_resolution(model: nn.Module, input_shape: list[int], exclude: tuple[str, ...] = ()) -> list[list[str]]:
    """The prunable groups (`channel_groups`' roots) gathered by the largest feature map any of their
    convolutions computes (a group's channels cost time where its feature maps are large: a squeeze-
    excitation group's root works on 1x1, its block's expansion at the block's resolution), largest
    first; within one resolution, in the roots' order."""
    import torch_pruning as tp

    dg, roots = channel_groups(model, input_shape, exclude)
    modules, units = dict(model.named_modules()), {}
    size = conv_positions(model, input_shape)
    for name in roots:
        group = dg.get_pruning_group(modules[name], tp.prune_conv_out_channels, idxs=[0])
        res = max(size.get(item.dep.target.module, 0) for item in group)
        units.setdefault(res, []).append(name)
    return [units[r] for r in sorted(units, reverse=True)]


def channel_costs(model: nn.Module, input_shape: list[int], exclude: tuple[str, ...] = ()) -> dict[str, float]:
    """The multiply-accumulates one channel of each prunable group (`channel_groups`' roots) takes
    with it: in every convolution and linear layer the removal narrows, the weights that channel
    feeds or produces times the positions they work on."""
    import torch_pruning as tp

    dg, roots = channel_groups(model, input_shape, exclude)
    modules = dict(model.named_modules())
    size = conv_positions(model, input_shape)
    costs = {}
    for name in roots:
        seen, cost = set(), 0.0
        for item in dg.get_pruning_group(modules[name], tp.prune_conv_out_channels, idxs=[0]):
            m, side = item.dep.target.module, item.dep.handler.__name__
            if not isinstance(m, (nn.Conv2d, nn.Linear)) or (m, side) in seen:
                continue
            seen.add((m, side))
            width = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
            if side != "prune_in_channels":
                width = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            cost += m.weight.numel() / width * size.get(m, 1)
        costs[name] = cost
    return costs


def filter_norms(conv: nn.Conv2d) -> torch.Tensor:
    """L2 norm of each output filter: the magnitude importance of a channel."""
    return conv.weight.detach().flatten(1).norm(dim=1)


def weakest(importance: torch.Tensor, n: int) -> list[int]:
    """The indices of the `n` least important channels, in channel order (ties: the lower index)."""
    return torch.argsort(importance, stable=True)[:n].sort().values.tolist()


def plan_structured(model: nn.Module, input_shape: list[int], ratio: float, importance: str = "magnitude",
                    scores: dict[str, list[float]] | None = None, exclude: tuple[str, ...] = (),
                    round_to: int = 1) -> list[dict]:
    """Choose, for every prunable conv, the `ratio` of output channels with the lowest importance;
    the channels kept are rounded up to a multiple of `round_to` (vector kernels work in blocks).

    importance: magnitude (filter L2 norm) or discriminability (`scores` from select: a conv is
    scored by the select layer it belongs to, i.e. whose name prefixes it and has as many channels).
    """
    if not 0.0 < ratio < 1.0:
        raise CompressorError(f"structured sparsity (fraction of channels) must be in (0, 1), got {ratio}")
    _, roots = channel_groups(model, input_shape, exclude)
    if not roots:
        raise CompressorError("found no convolution whose output channels can be removed")
    modules = dict(model.named_modules())
    plan = []
    for name in roots:
        conv = modules[name]
        if importance == "magnitude":
            imp = filter_norms(conv)
        elif importance == "discriminability":
            imp = _discriminability_for(name, conv.out_channels, scores or {})
            if imp is None:
                continue  # no score for this conv: leave it whole
        else:
            raise CompressorError(f"--importance must be magnitude or discriminability, got '{importance}'")
        kept = conv.out_channels - int(conv.out_channels * ratio)
        n_remove = conv.out_channels - min(conv.out_channels, -(-kept // round_to) * round_to)
        if n_remove == 0:
            continue
        removed = weakest(imp, n_remove)
        plan.append({"layer": name, "removed": removed, "channels": conv.out_channels})
    if not plan:
        raise CompressorError("no channels were chosen for removal (no scored layer matched a prunable conv?)")
    return plan


def _discriminability_for(conv_name: str, channels: int, scores: dict[str, list[float]]) -> torch.Tensor | None:
    best = None
    for layer, s in scores.items():
        if (conv_name == layer or conv_name.startswith(layer + ".")) and len(s) == channels:
            if best is None or len(layer) > len(best):
                best = layer
    return None if best is None else torch.tensor(scores[best])
