"""Logit regression: mean squared error between student and teacher logits."""

from __future__ import annotations


from compressor.distill.base import Distiller
from compressor.distill.functional import cross_entropy, logit_mse_loss
from compressor.distill.registry import register_method


@register_method("mse", summary="regression of the student's logits onto the teacher's: α·CE + (1 − α)·MSE",
                 uses=("alpha",), defaults={"alpha": 0.5})
class MSE(Distiller):
    def __init__(self, student, teacher, *, alpha: float | None = None, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.alpha = self.default("alpha", alpha)

    def forward_train(self, x, y):
        logits = self.model(x)
        return logits, {"loss_ce": self.alpha * cross_entropy(logits, y),
                        "loss_mse": (1 - self.alpha) * logit_mse_loss(logits, self.teacher_logits(x))}
