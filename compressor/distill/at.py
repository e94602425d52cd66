"""Attention transfer (Zagoruyko & Komodakis): match spatial attention maps, layer pair by pair."""

from __future__ import annotations


from compressor.distill.base import FeatureDistiller
from compressor.distill.functional import attention_transfer_loss, cross_entropy
from compressor.distill.registry import register_method


@register_method("at", summary="attention transfer: per layer pair, mean over channels of \\|A\\|², L2-normalized "
                 "maps, squared difference (pooled to the smaller map); α·CE + β·AT, AT balanced (scaled to equal the CE "
                 "on the first batch; `--no-balance`: raw, the paper's β is 1000)",
                 uses=("alpha", "beta", "balance", "layers", "pairs"), defaults={"alpha": 1.0, "beta": 1.0})
class AT(FeatureDistiller):
    def __init__(self, student, teacher, *, alpha: float | None = None, beta: float | None = None,
                 balance: bool = True, p: float = 2.0, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.alpha, self.beta, self.p = self.default("alpha", alpha), self.default("beta", beta), p
        self.balanced = balance

    def forward_train(self, x, y):
        logits, _, s, t = self.features(x)
        at = attention_transfer_loss([s[b] for _, b in self.pairs], [t[a] for a, _ in self.pairs], self.p)
        ce = cross_entropy(logits, y)
        at = self.balance(ce, at)
        return logits, {"loss_ce": self.alpha * ce, "loss_at": self.beta * at}
