"""FitNets (Romero et al.): a 1x1-conv regressor maps the student's guided layer onto the teacher's
hint layer (L2). Stage one trains the student up to its guided layer on the hint loss alone;
stage two trains the whole student with Hinton KD."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from compressor.distill.base import FeatureDistiller
from compressor.distill.functional import kd_terms, match_spatial


class FitNet(FeatureDistiller):
    def __init__(self, student, teacher, *, pairs, temperature: float = 4.0, alpha: float = 0.5, **kw) -> None:
        super().__init__(student, teacher, pairs=[pairs[(len(pairs) - 1) // 2]], **kw)  # one hint: the middle pair
        (t, s), = self.pairs
        self.regressor = nn.Conv2d(self.s_shapes[s][0], self.t_shapes[t][0], 1, bias=False)
        self.temperature, self.alpha, self.phase = temperature, alpha, "hint"

    def forward_train(self, x, y):
        logits, t_logits, s, t = self.features(x)
        (tn, sn), = self.pairs
        if self.phase == "hint":
            a, b = match_spatial(self.regressor(s[sn]), t[tn])
            return logits, {"loss_hint": F.mse_loss(a, b)}
        ce, soft = kd_terms(logits, t_logits, y, self.temperature, self.alpha)
        return logits, {"loss_ce": ce, "loss_kd": soft}
