"""Attention transfer (Zagoruyko & Komodakis): match spatial attention maps, layer pair by pair."""

from __future__ import annotations

import torch.nn.functional as F

from compressor.distill.base import FeatureDistiller
from compressor.distill.functional import attention_transfer_loss

DEFAULT_BETA = 1000.0  # as in the original code


class AT(FeatureDistiller):
    def __init__(self, student, teacher, beta: float | None = None, p: float = 2.0, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.beta, self.p = DEFAULT_BETA if beta is None else beta, p

    def forward_train(self, x, y):
        logits, _, s, t = self.features(x)
        at = attention_transfer_loss([s[b] for _, b in self.pairs], [t[a] for a, _ in self.pairs], self.p)
        return logits, {"loss_ce": F.cross_entropy(logits, y), "loss_at": self.beta * at}
