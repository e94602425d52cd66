"""The Distiller base classes: a student, a frozen teacher, and named losses."""

from __future__ import annotations

import torch
import torch.nn as nn

from compressor import CompressorError
from compressor.distill.features import FeatureTap, probe_shapes


class Distiller(nn.Module):
    """Wrap a student and a teacher. `forward_train(x, y)` returns (student logits, {name: loss}).

    Offline scheme: the teacher is frozen (no gradients) and always in eval mode, whatever
    `train()` is called with. Subclasses accept the shared keyword options they need and ignore
    the rest, so the stage can build any method the same way.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, **_) -> None:
        super().__init__()
        self.model = student
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor):
        raise NotImplementedError

    def close(self) -> None:
        """Remove any hooks this distiller put on the models."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters besides the student's (adapters, regressors)."""
        student = {id(p) for p in self.model.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in student]


class FeatureDistiller(Distiller):
    """A distiller that reads intermediate features of both models through forward hooks.

    Args:
        pairs: (teacher layer, student layer) module names.
        channels: optional {teacher layer: kept channel indices} (from `select`): teacher features
            are restricted to those channels before any loss sees them.
        input_shape: (C, H, W), used to probe feature shapes for sizing adapters.
    """

    def __init__(self, student, teacher, *, pairs: list[tuple[str, str]], input_shape: list[int],
                 channels: dict[str, list[int]] | None = None, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.pairs = list(pairs)
        t_names = list(dict.fromkeys(t for t, _ in self.pairs))
        s_names = list(dict.fromkeys(s for _, s in self.pairs))
        self.t_shapes = probe_shapes(teacher, t_names, input_shape)
        self.s_shapes = probe_shapes(student, s_names, input_shape)
        self.kept = {}
        for name in t_names:
            if channels and name in channels:
                idx = torch.tensor(channels[name], dtype=torch.long)
                if len(idx) and int(idx.max()) >= self.t_shapes[name][0]:
                    raise CompressorError(f"--channels keeps channel {int(idx.max())} of teacher layer {name}, "
                                          f"which has only {self.t_shapes[name][0]}; was it made for this teacher?")
                self.kept[name] = idx
                self.t_shapes[name] = (len(idx), *self.t_shapes[name][1:])
        self._t_tap = FeatureTap(teacher, t_names, detach=True)
        self._s_tap = FeatureTap(student, s_names)

    def features(self, x: torch.Tensor):
        """(student logits, teacher logits, student features, teacher features) for one batch."""
        with torch.no_grad():
            t_logits = self.teacher(x)
        t_feats = self._t_tap.pop()
        for name, idx in self.kept.items():
            t_feats[name] = t_feats[name].index_select(1, idx.to(t_feats[name].device))
        s_logits = self.model(x)
        return s_logits, t_logits, self._s_tap.pop(), t_feats

    def close(self) -> None:
        self._t_tap.remove()
        self._s_tap.remove()
