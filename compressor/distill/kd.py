"""Hinton knowledge distillation on softened logits."""

from __future__ import annotations

from compressor.distill.base import Distiller
from compressor.distill.functional import kd_terms
from compressor.distill.registry import register_method


@register_method("kd", summary="Hinton: α·CE + (1 − α)·T²·KL(teacher_T ‖ student_T)", uses=("temperature", "alpha"),
                 defaults={"temperature": 4.0, "alpha": 0.5})
class KD(Distiller):
    def __init__(self, student, teacher, *, temperature: float | None = None, alpha: float | None = None,
                 **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.temperature, self.alpha = self.default("temperature", temperature), self.default("alpha", alpha)

    def forward_train(self, x, y):
        logits = self.model(x)
        teacher = self.teacher_logits(x) if self.alpha < 1 else logits.detach()
        ce, soft = kd_terms(logits, teacher, y, self.temperature, self.alpha)
        return logits, {"loss_ce": ce, "loss_kd": soft}
