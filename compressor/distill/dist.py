"""DIST (Huang et al., NeurIPS 2022): match the relations of the softened predictions, not their
values: Pearson correlation across classes (inter-class) and across the batch (intra-class); made
for teachers much stronger than their students."""

from __future__ import annotations

from compressor.distill.base import Distiller
from compressor.distill.functional import cross_entropy, dist_loss
from compressor.distill.registry import register_method


@register_method("dist", summary="relations of softened predictions: α·CE + β·inter-class + γ·intra-class "
                 "(T²·(1 − Pearson correlation) across classes, across the batch)",
                 uses=("temperature", "alpha", "beta", "gamma"),
                 defaults={"temperature": 1.0, "alpha": 1.0, "beta": 1.0, "gamma": 1.0})
class DIST(Distiller):
    def __init__(self, student, teacher, *, temperature: float | None = None, alpha: float | None = None,
                 beta: float | None = None, gamma: float | None = None, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.temperature, self.alpha = self.default("temperature", temperature), self.default("alpha", alpha)
        self.beta, self.gamma = self.default("beta", beta), self.default("gamma", gamma)

    def forward_train(self, x, y):
        logits = self.model(x)
        teacher = self.teacher_logits(x)
        return logits, {"loss_ce": self.alpha * cross_entropy(logits, y),
                        "loss_dist": dist_loss(logits, teacher, self.beta, self.gamma, self.temperature)}
