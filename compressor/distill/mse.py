"""Logit regression: mean squared error between student and teacher logits."""

from __future__ import annotations

import torch.nn.functional as F

from compressor.distill.base import Distiller
from compressor.distill.functional import logit_mse_loss


class MSE(Distiller):
    def __init__(self, student, teacher, alpha: float = 0.5, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.alpha = alpha

    def forward_train(self, x, y):
        logits = self.model(x)
        return logits, {"loss_ce": self.alpha * F.cross_entropy(logits, y),
                        "loss_mse": (1 - self.alpha) * logit_mse_loss(logits, self.teacher_logits(x))}
