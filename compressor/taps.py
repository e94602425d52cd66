"""Tap intermediate layers with forward hooks registered by module name (models stay off-the-shelf):
distillation reads features through them, pruning the feature-map sizes."""

from __future__ import annotations

import torch
import torch.nn as nn

from compressor import CompressorError


class FeatureTap:
    """Record the outputs of named submodules during a forward pass.

    Example::

        with FeatureTap(model, ["layer2", "layer3"]) as tap:
            logits = model(x)
            feats = tap.pop()  # {"layer2": tensor, "layer3": tensor}
    """

    def __init__(self, model: nn.Module, names: list[str], detach: bool = False, capture: str = "output") -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            some = ", ".join(n for n, _ in list(model.named_children())[:8])
            raise CompressorError(f"no layer named {', '.join(missing)} in {type(model).__name__} "
                                  f"(top-level layers: {some})")
        self.names, self.detach, self.capture, self._out = list(names), detach, capture, {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self.capture == "input":
                output = inputs[0]
            if isinstance(output, (tuple, list)):
                output = output[0]
            self._out[name] = output.detach() if self.detach else output
        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        out, self._out = {n: self._out[n] for n in self.names if n in self._out}, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def probe_shapes(model: nn.Module, names: list[str], input_shape: list[int], capture: str = "output") -> dict[str, tuple]:
    """(C, H, W) (or (D,)) of each named layer's output for one input of `input_shape`."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with FeatureTap(model, names, detach=True, capture=capture) as tap:
            model(torch.zeros(2, *input_shape, device=device))
            return {n: tuple(f.shape[1:]) for n, f in tap.pop().items()}
    finally:
        model.train(was_training)
