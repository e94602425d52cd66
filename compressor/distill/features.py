"""Tap intermediate layers with forward hooks registered by module name (models stay off-the-shelf)."""

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


def pair_layers(teacher_layers: list[str], student_layers: list[str], mode: str = "matched") -> list[tuple[str, str]]:
    """(teacher layer, student layer) pairs.

    matched: stage by stage by relative depth (student stage j of S gets teacher stage
    round((j + 1) * T / S) - 1), so the last stages always pair. all: every teacher layer with
    every student layer (T x S pairs), which lets models of different depths be distilled.
    """
    if mode == "all":
        return [(t, s) for t in teacher_layers for s in student_layers]
    if mode != "matched":
        raise CompressorError(f"--pairs must be matched or all, got '{mode}'")
    n_t, n_s = len(teacher_layers), len(student_layers)
    if n_s > n_t:
        return [(teacher_layers[round((i + 1) * n_t / n_s) - 1 if n_t else 0], student_layers[i])
                for i in range(n_s)][-n_t:]
    return [(teacher_layers[round((j + 1) * n_t / n_s) - 1], student_layers[j]) for j in range(n_s)]


def parse_layer_pairs(spec: str) -> list[tuple[str, str]]:
    """'t1:s1,t2:s2' -> [(t1, s1), (t2, s2)]."""
    pairs = []
    for item in spec.split(","):
        if item.count(":") != 1 or not all(part.strip() for part in item.split(":")):
            raise CompressorError(f"--layers wants TEACHER:STUDENT pairs separated by commas, got '{item}'")
        t, s = item.split(":")
        pairs.append((t.strip(), s.strip()))
    return pairs
