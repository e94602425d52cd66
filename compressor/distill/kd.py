"""Hinton knowledge distillation on softened logits."""

from __future__ import annotations

from compressor.distill.base import Distiller
from compressor.distill.functional import kd_terms


class KD(Distiller):
    def __init__(self, student, teacher, temperature: float = 4.0, alpha: float = 0.5, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.temperature, self.alpha = temperature, alpha

    def forward_train(self, x, y):
        logits = self.model(x)
        teacher = self.teacher_logits(x) if self.alpha < 1 else logits.detach()
        ce, soft = kd_terms(logits, teacher, y, self.temperature, self.alpha)
        return logits, {"loss_ce": ce, "loss_kd": soft}
