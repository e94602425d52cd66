"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022): the KD loss split into a target-class
term (TCKD) and a non-target-class term (NCKD), weighted separately, with the KD terms warmed up
linearly over the first epochs (as in the paper's code, mdistiller)."""

from __future__ import annotations

import math

from compressor.distill.base import Distiller
from compressor.distill.functional import cross_entropy, dkd_loss
from compressor.distill.registry import register_method

WARMUP_FRACTION = 20 / 240  # the paper's CIFAR schedule: 20 warm-up epochs of 240


@register_method("dkd", summary="decoupled KD: α·CE + w·(β·TCKD + γ·NCKD)·T², w rising linearly to 1 over the first "
                 "1/12 of the epochs (the paper's 20 of 240)", uses=("temperature", "alpha", "beta", "gamma"),
                 defaults={"temperature": 4.0, "alpha": 1.0, "beta": 1.0, "gamma": 8.0})
class DKD(Distiller):
    def __init__(self, student, teacher, *, temperature: float | None = None, alpha: float | None = None,
                 beta: float | None = None, gamma: float | None = None, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.temperature, self.alpha = self.default("temperature", temperature), self.default("alpha", alpha)
        self.beta, self.gamma = self.default("beta", beta), self.default("gamma", gamma)
        self.warmup, self.epoch = 1, 1

    def phases(self, epochs: int) -> list[tuple[str, int]]:
        self.warmup = max(1, math.ceil(epochs * WARMUP_FRACTION))
        return [("main", epochs)]

    def on_batch(self, epoch: int, index) -> None:
        super().on_batch(epoch, index)
        self.epoch = epoch

    def warmup_weight(self) -> float:
        """min(epoch / warm-up epochs, 1), epochs counted from 1 (mdistiller's schedule)."""
        return min(self.epoch / self.warmup, 1.0)

    def forward_train(self, x, y):
        logits = self.model(x)
        teacher = self.teacher_logits(x)
        kd = dkd_loss(logits, teacher, y, self.beta, self.gamma, self.temperature)
        return logits, {"loss_ce": self.alpha * cross_entropy(logits, y), "loss_dkd": self.warmup_weight() * kd}
