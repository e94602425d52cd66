"""Magnitude pruning: masks from weight magnitudes, kept at exactly zero through fine-tuning."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from compressor import CompressorError


def prunable_layers(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """Conv and linear layers by module name (their `.weight` is what gets pruned)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in exclude}


def global_magnitude_masks(layers: dict[str, nn.Module], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all layers: the `sparsity` fraction of smallest |w| become zero.

    Ties at the threshold are pruned too, so the measured sparsity is never below the target.
    """
    if not 0.0 <= sparsity < 1.0:
        raise CompressorError(f"sparsity must be in [0, 1), got {sparsity}")
    if not layers:
        raise CompressorError("the model has no conv or linear layers to prune")
    scores = torch.cat([m.weight.detach().abs().flatten().cpu() for m in layers.values()])
    k = math.ceil(sparsity * scores.numel())
    if k == 0:
        return {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in layers.items()}
    threshold = torch.kthvalue(scores, k).values
    return {n: m.weight.detach().abs() > threshold.to(m.weight.device) for n, m in layers.items()}


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
