"""FitNets (Romero et al.): a 1x1-conv regressor maps the student's guided layer onto the teacher's
hint layer (L2). Phase one (`hint_epochs`) trains the student up to its guided layer on the hint
loss alone; phase two trains the whole student with Hinton KD."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from compressor.distill.base import FeatureDistiller
from compressor.distill.functional import kd_terms, match_spatial
from compressor.distill.registry import register_method


@register_method("fitnet", summary="hints: a 1×1-conv regressor maps the middle student stage onto the middle "
                 "teacher stage (L2); phase one trains on the hint alone, phase two with `kd`",
                 uses=("temperature", "alpha", "layers", "pairs", "hint_epochs"),
                 defaults={"temperature": 4.0, "alpha": 0.5})
class FitNet(FeatureDistiller):
    def __init__(self, student, teacher, *, pairs, temperature: float | None = None, alpha: float | None = None,
                 hint_epochs: int = 1, **kw) -> None:
        super().__init__(student, teacher, pairs=[pairs[(len(pairs) - 1) // 2]], **kw)  # one hint: the middle pair
        (t, s), = self.pairs
        self.regressor = nn.Conv2d(self.s_shapes[s][0], self.t_shapes[t][0], 1, bias=False)
        self.temperature, self.alpha = self.default("temperature", temperature), self.default("alpha", alpha)
        self.hint_epochs, self.phase = hint_epochs, "hint"

    def phases(self, epochs: int) -> list[tuple[str, int]]:
        return ([("hints", self.hint_epochs)] if self.hint_epochs else []) + [("main", epochs)]

    def begin_phase(self, tag: str) -> None:
        self.phase = "hint" if tag == "hints" else "kd"

    def forward_train(self, x, y):
        logits, t_logits, s, t = self.features(x)
        (tn, sn), = self.pairs
        if self.phase == "hint":
            a, b = match_spatial(self.regressor(s[sn]), t[tn])
            return logits, {"loss_hint": F.mse_loss(a, b)}
        ce, soft = kd_terms(logits, t_logits, y, self.temperature, self.alpha)
        return logits, {"loss_ce": ce, "loss_kd": soft}
