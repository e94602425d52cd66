"""Relational KD (Park et al.): distance- and angle-wise potentials on penultimate embeddings.

Loss = alpha * CE + beta * RKD, RKD balanced (scaled to equal the CE on the first batch), beta 0.5
(at beta 1 the term swamped the cross-entropy on the quickstart: docs/measurements.md)."""

from __future__ import annotations

from compressor import CompressorError
from compressor.distill.base import Distiller
from compressor.taps import FeatureTap
from compressor.distill.functional import cross_entropy, rkd_loss
from compressor.distill.registry import register_method
from compressor.models import classifier_name


@register_method("rkd", summary="relational: distance-wise (weight 25) and angle-wise (50) potentials of the "
                 "penultimate embeddings, Huber loss; α·CE + β·RKD, RKD balanced (scaled to equal the CE on the first "
                 "batch)", uses=("alpha", "beta", "balance"),
                 defaults={"alpha": 1.0, "beta": 0.5})
class RKD(Distiller):
    def __init__(self, student, teacher, *, alpha: float | None = None, beta: float | None = None,
                 balance: bool = True, distance_weight: float = 25.0, angle_weight: float = 50.0, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.alpha, self.beta = self.default("alpha", alpha), self.default("beta", beta)
        self.balanced = balance
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        heads = classifier_name(student), classifier_name(teacher)
        if None in heads:
            raise CompressorError("rkd needs the classifier layer of both models to read their embeddings")
        self._s_tap = FeatureTap(student, [heads[0]], capture="input")
        self._t_tap = FeatureTap(teacher, [heads[1]], capture="input", detach=True)

    def forward_train(self, x, y):
        _, t = self.teacher_outputs(x)
        (t_emb,) = t.values()
        logits = self.model(x)
        (s_emb,) = self._s_tap.pop().values()
        ce, rkd = cross_entropy(logits, y), rkd_loss(s_emb, t_emb, self.distance_weight, self.angle_weight)
        rkd = self.balance(ce, rkd)
        return logits, {"loss_ce": self.alpha * ce, "loss_rkd": self.beta * rkd}

    def close(self) -> None:
        super().close()
        self._s_tap.remove()
