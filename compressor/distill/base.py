"""The Distiller base class: a student, a frozen teacher, and named losses."""

from __future__ import annotations

import torch
import torch.nn as nn


class Distiller(nn.Module):
    """Wrap a student and a teacher. `forward_train(x, y)` returns (student logits, {name: loss}).

    Offline scheme: the teacher is frozen (no gradients) and always in eval mode, whatever
    `train()` is called with.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
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
